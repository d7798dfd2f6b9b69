//! The Job controller: runs pods until `completions` succeed, at most
//! `parallelism` at a time, replacing failed ones up to `backoffLimit` with
//! Kubernetes' exponential delay, and fails the Job on the backoff limit or
//! `activeDeadlineSeconds`. Finished Jobs are deleted after
//! `ttlSecondsAfterFinished`.
//!
//! As in Kubernetes 1.31+, a decided outcome is first recorded as the
//! `FailureTarget` or `SuccessCriteriaMet` condition; `Failed` or `Complete`
//! follows once the Job's remaining pods have terminated.
//!
//! Counting is by listing the Job's pods (Kubernetes' pre-1.26 "legacy"
//! tracking): a finished pod that is deleted is no longer counted.

use super::events;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

const COMPONENT: &str = "job-controller";

/// Labels Kubernetes puts on a Job's pods (and in its generated selector).
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The Job name label.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

fn jobs() -> &'static ResourceInfo {
    resources::lookup("batch", "v1", "jobs").expect("jobs are served")
}

fn pods_res() -> &'static ResourceInfo {
    resources::lookup("", "v1", "pods").expect("pods are served")
}

/// The Job controller.
pub struct JobController {
    /// First delay before replacing a failed pod; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Cap of that delay.
    pub backoff_max: Duration,
}

impl Default for JobController {
    fn default() -> Self {
        // Kubernetes' values: 10 s doubling, capped at 6 minutes.
        JobController {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(360),
        }
    }
}

impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self) -> Vec<Watch> {
        vec![Watch::primary(jobs()), Watch::owned(pods_res(), "Job")]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.as_deref();
        let Some(job) = client.get(jobs(), ns, &key.name)? else {
            return Ok(Action::AwaitChange);
        };
        if pods::is_deleting(&job) {
            return Ok(Action::AwaitChange);
        }
        let uid = object::meta_str(&job, "uid").unwrap_or("").to_string();
        let (all, _) = client.list(pods_res(), ns, None)?;
        let mine: Vec<Value> = all
            .into_iter()
            .filter(|p| pods::controlled_by(p, &uid))
            .collect();
        self.sync(client, &job, &mine, Utc::now()).await
    }
}

/// Counts of a Job's pods.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    active: i64,
    ready: i64,
    succeeded: i64,
    failed: i64,
    terminating: i64,
}

fn count(pods_: &[Value]) -> Counts {
    let mut c = Counts::default();
    for p in pods_ {
        match pods::phase(p) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if pods::is_deleting(p) => c.terminating += 1,
            _ => {
                c.active += 1;
                if pods::is_ready(p) {
                    c.ready += 1;
                }
            }
        }
    }
    c
}

/// How a Job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    failed: bool,
    reason: String,
    message: String,
}

impl Outcome {
    fn fail(reason: &str, message: &str) -> Outcome {
        Outcome {
            failed: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
    fn complete() -> Outcome {
        Outcome {
            failed: false,
            reason: "CompletionsReached".into(),
            message: "Reached expected number of succeeded pods".into(),
        }
    }
    /// The interim condition type recorded while pods terminate.
    fn target(&self) -> &'static str {
        if self.failed {
            "FailureTarget"
        } else {
            "SuccessCriteriaMet"
        }
    }
    /// The final condition type.
    fn terminal(&self) -> &'static str {
        if self.failed {
            "Failed"
        } else {
            "Complete"
        }
    }
}

fn spec_i64(job: &Value, field: &str) -> Option<i64> {
    job.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_i64)
}

/// Decide whether the Job is finished, given its counts, when it started and now.
fn decide(
    job: &Value,
    c: &Counts,
    start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Outcome> {
    let status = job.get("status").cloned().unwrap_or(json!({}));
    // A recorded decision sticks, so the outcome cannot flip while pods terminate.
    for (t, failed) in [("FailureTarget", true), ("SuccessCriteriaMet", false)] {
        if let Some(cond) = pods::condition(&status, t) {
            return Some(Outcome {
                failed,
                reason: cond["reason"].as_str().unwrap_or("").into(),
                message: cond["message"].as_str().unwrap_or("").into(),
            });
        }
    }
    let backoff_limit = spec_i64(job, "backoffLimit").unwrap_or(6);
    if c.failed > backoff_limit {
        return Some(Outcome::fail(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
    }
    let suspended = job.pointer("/spec/suspend") == Some(&json!(true));
    if let (Some(d), Some(start), false) =
        (spec_i64(job, "activeDeadlineSeconds"), start, suspended)
    {
        if start + chrono::Duration::seconds(d) <= now {
            return Some(Outcome::fail(
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        }
    }
    match spec_i64(job, "completions") {
        Some(n) if c.succeeded >= n => Some(Outcome::complete()),
        // Without completions (a work queue), the first success ends the Job
        // once no pod runs any more.
        None if c.succeeded > 0 && c.active == 0 => Some(Outcome::complete()),
        _ => None,
    }
}

/// How many pods should be active.
fn wanted_active(job: &Value, c: &Counts) -> i64 {
    let parallelism = spec_i64(job, "parallelism").unwrap_or(1).max(0);
    match spec_i64(job, "completions") {
        Some(n) => parallelism.min((n - c.succeeded).max(0)),
        // Work-queue Jobs start no new pods once one succeeded.
        None if c.succeeded > 0 => c.active.min(parallelism),
        None => parallelism,
    }
}

impl JobController {
    /// When the next replacement pod may be created, after consecutive failures.
    fn backoff_until(&self, pods_: &[Value]) -> Option<DateTime<Utc>> {
        let last_success = pods_
            .iter()
            .filter(|p| pods::phase(p) == "Succeeded")
            .filter_map(pods::finish_time)
            .max();
        let fails: Vec<DateTime<Utc>> = pods_
            .iter()
            .filter(|p| pods::phase(p) == "Failed")
            .filter_map(pods::finish_time)
            .filter(|t| last_success.is_none_or(|s| *t > s))
            .collect();
        let last = *fails.iter().max()?;
        let n = fails.len() as u32;
        let delay =
            (self.backoff_base * 2u32.saturating_pow((n - 1).min(16))).min(self.backoff_max);
        Some(last + chrono::Duration::from_std(delay).unwrap_or_default())
    }

    async fn sync(
        &self,
        client: &LocalClient,
        job: &Value,
        mine: &[Value],
        now: DateTime<Utc>,
    ) -> Result<Action, ApiError> {
        let old_status = job.get("status").cloned().unwrap_or(json!({}));
        let finished = ["Complete", "Failed"]
            .iter()
            .any(|t| pods::condition(&old_status, t).is_some());
        let active: Vec<&Value> = mine.iter().filter(|p| pods::is_active(p)).collect();
        if finished {
            // Level-based cleanup: nothing of a finished Job keeps running.
            self.delete_pods(client, job, &active).await?;
            return self.expire(client, job, &old_status, now).await;
        }
        let mut c = count(mine);
        let suspended = job.pointer("/spec/suspend") == Some(&json!(true));
        let start = pods::time_at(&old_status, "/startTime").or((!suspended).then_some(now));
        let now_s = pods::format_time(now);
        let mut status = old_status.clone();
        let mut requeue: Option<Duration> = None;
        let mut finished_event: Option<Outcome> = None;
        if let Some(outcome) = decide(job, &c, start, now) {
            pods::set_condition(
                &mut status,
                outcome.target(),
                "True",
                &outcome.reason,
                &outcome.message,
                &now_s,
            );
            let deleted = self.delete_pods(client, job, &active).await?;
            c.terminating += deleted;
            c.active -= deleted;
            c.ready = 0;
            if deleted == 0 && c.terminating == 0 {
                pods::set_condition(
                    &mut status,
                    outcome.terminal(),
                    "True",
                    &outcome.reason,
                    &outcome.message,
                    &now_s,
                );
                if !outcome.failed {
                    status["completionTime"] = json!(now_s);
                }
                finished_event = Some(outcome);
            }
        } else if suspended {
            let deleted = self.delete_pods(client, job, &active).await?;
            c.terminating += deleted;
            c.active -= deleted;
            c.ready = 0;
            pods::set_condition(
                &mut status,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                &now_s,
            );
        } else {
            if pods::condition(&status, "Suspended").is_some() {
                pods::set_condition(
                    &mut status,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    &now_s,
                );
            }
            let want = wanted_active(job, &c);
            if c.active > want {
                let mut victims = active.clone();
                // Unscheduled first, then not ready, then newest, as Kubernetes prefers.
                victims.sort_by_key(|p| {
                    (
                        pods::node_name(p).is_some(),
                        pods::is_ready(p),
                        std::cmp::Reverse(
                            object::meta_str(p, "creationTimestamp")
                                .unwrap_or("")
                                .to_string(),
                        ),
                    )
                });
                victims.truncate((c.active - want) as usize);
                let deleted = self.delete_pods(client, job, &victims).await?;
                c.active -= deleted;
                c.terminating += deleted;
            } else if c.active < want {
                match self.backoff_until(mine) {
                    Some(t) if t > now => {
                        requeue = Some(
                            (t - now).to_std().unwrap_or_default() + Duration::from_millis(50),
                        );
                    }
                    _ => {
                        for _ in c.active..want {
                            self.create_pod(client, job).await?;
                            c.active += 1;
                        }
                    }
                }
            }
            if let (Some(d), Some(start)) = (spec_i64(job, "activeDeadlineSeconds"), start) {
                let left = (start + chrono::Duration::seconds(d) - now)
                    .to_std()
                    .unwrap_or_default();
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }
        // A suspended Job has no startTime, so its deadline counts from resumption.
        match (suspended, start) {
            (false, Some(s)) => status["startTime"] = json!(pods::format_time(s)),
            _ => {
                if let Some(m) = status.as_object_mut() {
                    m.remove("startTime");
                }
            }
        }
        status["active"] = json!(c.active);
        status["ready"] = json!(c.ready);
        status["succeeded"] = json!(c.succeeded);
        status["failed"] = json!(c.failed);
        status["terminating"] = json!(c.terminating);
        status["uncountedTerminatedPods"] = json!({});
        if status != old_status {
            let mut updated = job.clone();
            updated["status"] = status.clone();
            client.update_status(jobs(), updated).await?;
        }
        if let Some(o) = finished_event {
            let (type_, reason, message) = if o.failed {
                ("Warning", o.reason.as_str(), o.message.as_str())
            } else {
                ("Normal", "Completed", "Job completed")
            };
            events::record(client, COMPONENT, job, type_, reason, message).await;
            let mut done = job.clone();
            done["status"] = status;
            return self.expire(client, &done, &done["status"], now).await;
        }
        Ok(requeue.map_or(Action::AwaitChange, Action::Requeue))
    }

    /// ttlSecondsAfterFinished: delete the Job (and, in the foreground, its pods) once expired.
    async fn expire(
        &self,
        client: &LocalClient,
        job: &Value,
        status: &Value,
        now: DateTime<Utc>,
    ) -> Result<Action, ApiError> {
        let Some(ttl) = spec_i64(job, "ttlSecondsAfterFinished") else {
            return Ok(Action::AwaitChange);
        };
        let finished_at = ["Complete", "Failed"]
            .iter()
            .filter_map(|t| pods::condition(status, t))
            .filter_map(|c| pods::time_at(c, "/lastTransitionTime"))
            .next()
            .unwrap_or(now);
        let at = finished_at + chrono::Duration::seconds(ttl);
        if at > now {
            return Ok(Action::Requeue(
                (at - now).to_std().unwrap_or_default() + Duration::from_millis(50),
            ));
        }
        let ns = object::meta_str(job, "namespace");
        let name = object::meta_str(job, "name").unwrap_or("");
        // Kubernetes' TTL controller deletes in the foreground.
        let opts = json!({"propagationPolicy": "Foreground", "preconditions": {"uid": job.pointer("/metadata/uid")}});
        client.delete(jobs(), ns, name, &opts).await?;
        Ok(Action::AwaitChange)
    }

    async fn create_pod(&self, client: &LocalClient, job: &Value) -> Result<(), ApiError> {
        let ns = object::meta_str(job, "namespace").unwrap_or("default");
        let pod = pod_from_template(job);
        let created = client.create(pods_res(), Some(ns), pod).await?;
        let pod_name = object::meta_str(&created, "name").unwrap_or("");
        events::record(
            client,
            COMPONENT,
            job,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {pod_name}"),
        )
        .await;
        Ok(())
    }

    /// Delete pods; returns how many were deleted.
    async fn delete_pods(
        &self,
        client: &LocalClient,
        job: &Value,
        victims: &[&Value],
    ) -> Result<i64, ApiError> {
        let mut n = 0;
        for p in victims {
            let name = object::meta_str(p, "name").unwrap_or("");
            let opts = json!({"preconditions": {"uid": p.pointer("/metadata/uid")}});
            if client
                .delete(pods_res(), object::meta_str(p, "namespace"), name, &opts)
                .await?
            {
                n += 1;
                events::record(
                    client,
                    COMPONENT,
                    job,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
            }
        }
        Ok(n)
    }
}

/// A pod for `job` from its template, labelled and owned as Kubernetes does.
fn pod_from_template(job: &Value) -> Value {
    let name = object::meta_str(job, "name").unwrap_or("");
    let uid = object::meta_str(job, "uid").unwrap_or("");
    let tmeta = job
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or(json!({}));
    let mut labels = tmeta.get("labels").cloned().unwrap_or(json!({}));
    if !labels.is_object() {
        labels = json!({});
    }
    labels[CONTROLLER_UID_LABEL] = json!(uid);
    labels["controller-uid"] = json!(uid);
    if name.len() <= 63 {
        labels[JOB_NAME_LABEL] = json!(name);
        labels["job-name"] = json!(name);
    }
    let mut meta = json!({
        "generateName": format!("{name}-"),
        "labels": labels,
        "ownerReferences": [pods::controller_ref(job)],
    });
    if let Some(a) = tmeta.get("annotations") {
        meta["annotations"] = a.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": job.pointer("/spec/template/spec").cloned().unwrap_or(json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        pods::parse_time(s).unwrap()
    }

    fn job(spec: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "d", "uid": "u1"}, "spec": spec})
    }

    fn pod(phase: &str, finished: &str) -> Value {
        json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true}]},
            "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": {"finishedAt": finished}}}]}})
    }

    #[test]
    fn counts_pods_by_state() {
        let running = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let deleting =
            json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        let c = count(&[
            running,
            deleting,
            pod("Failed", "2024-01-01T00:00:00Z"),
            pod("Succeeded", "2024-01-01T00:00:00Z"),
        ]);
        assert_eq!(
            c,
            Counts {
                active: 1,
                ready: 1,
                succeeded: 1,
                failed: 1,
                terminating: 1
            }
        );
    }

    #[test]
    fn parallelism_is_capped_by_remaining_completions() {
        let j = job(json!({"parallelism": 2, "completions": 5}));
        assert_eq!(
            wanted_active(
                &j,
                &Counts {
                    succeeded: 4,
                    ..Default::default()
                }
            ),
            1
        );
        assert_eq!(
            wanted_active(
                &j,
                &Counts {
                    succeeded: 1,
                    ..Default::default()
                }
            ),
            2
        );
        let wq = job(json!({"parallelism": 3}));
        assert_eq!(wanted_active(&wq, &Counts::default()), 3);
        assert_eq!(
            wanted_active(
                &wq,
                &Counts {
                    succeeded: 1,
                    active: 1,
                    ..Default::default()
                }
            ),
            1
        );
    }

    #[test]
    fn decides_failure_and_completion() {
        let now = t("2024-01-01T01:00:00Z");
        let j = job(json!({"backoffLimit": 2, "completions": 3, "activeDeadlineSeconds": 60}));
        let failed3 = Counts {
            failed: 3,
            ..Default::default()
        };
        assert_eq!(
            decide(&j, &failed3, Some(now), now).unwrap().reason,
            "BackoffLimitExceeded"
        );
        let failed2 = Counts {
            failed: 2,
            ..Default::default()
        };
        assert_eq!(decide(&j, &failed2, Some(now), now), None);
        let old = t("2024-01-01T00:58:00Z");
        assert_eq!(
            decide(&j, &failed2, Some(old), now).unwrap().reason,
            "DeadlineExceeded"
        );
        let done = Counts {
            succeeded: 3,
            ..Default::default()
        };
        let o = decide(&j, &done, Some(now), now).unwrap();
        assert!(!o.failed);
        assert_eq!(o.terminal(), "Complete");
        // A recorded target sticks even if the counts change.
        let mut j2 = j.clone();
        j2["status"] = json!({"conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]});
        assert!(
            decide(&j2, &Counts::default(), Some(now), now)
                .unwrap()
                .failed
        );
    }

    #[test]
    fn backoff_doubles_per_consecutive_failure() {
        let c = JobController::default();
        assert_eq!(
            c.backoff_until(&[pod("Succeeded", "2024-01-01T00:00:00Z")]),
            None
        );
        let one = [pod("Failed", "2024-01-01T00:00:00Z")];
        assert_eq!(c.backoff_until(&one), Some(t("2024-01-01T00:00:10Z")));
        let two = [
            pod("Failed", "2024-01-01T00:00:00Z"),
            pod("Failed", "2024-01-01T00:00:30Z"),
        ];
        assert_eq!(c.backoff_until(&two), Some(t("2024-01-01T00:00:50Z")));
        // A success resets the streak.
        let reset = [
            pod("Failed", "2024-01-01T00:00:00Z"),
            pod("Succeeded", "2024-01-01T00:00:20Z"),
            pod("Failed", "2024-01-01T00:00:30Z"),
        ];
        assert_eq!(c.backoff_until(&reset), Some(t("2024-01-01T00:00:40Z")));
    }

    #[test]
    fn pods_carry_job_labels_and_owner() {
        let mut j = job(
            json!({"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": []}}}),
        );
        j["metadata"]["name"] = json!("j");
        let p = pod_from_template(&j);
        assert_eq!(p["metadata"]["generateName"], "j-");
        assert_eq!(p["metadata"]["labels"]["app"], "x");
        assert_eq!(p["metadata"]["labels"][CONTROLLER_UID_LABEL], "u1");
        assert_eq!(p["metadata"]["labels"]["job-name"], "j");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
        assert_eq!(p["spec"]["restartPolicy"], "Never");
    }
}
