//! The CronJob controller: creates a Job for each time the schedule fires
//! (in `spec.timeZone`, UTC without one), honouring `concurrencyPolicy`,
//! `startingDeadlineSeconds`, `suspend` and the history limits, and keeps
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! Jobs are named `<cronjob>-<scheduled time in unix minutes>` as Kubernetes
//! names them, so a repeated reconcile of the same time finds the Job it
//! already made instead of making another.

use super::events;
use super::pods;
use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde_json::{json, Value};
use std::time::Duration;

const COMPONENT: &str = "cronjob-controller";
/// Annotation Kubernetes puts on Jobs made by a CronJob.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Kubernetes warns when more start times than this were missed.
const TOO_MANY_MISSED: usize = 100;

fn cronjobs() -> &'static ResourceInfo {
    resources::lookup("batch", "v1", "cronjobs").expect("cronjobs are served")
}

fn jobs() -> &'static ResourceInfo {
    resources::lookup("batch", "v1", "jobs").expect("jobs are served")
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parse a standard 5-field cron line or an `@` descriptor, in `tz` (an
    /// IANA name; UTC when None), with the syntax Kubernetes accepts.
    pub fn parse(schedule: &str, tz: Option<&str>) -> Result<Schedule, String> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err(
                "TZ and CRON_TZ are not supported in the schedule; use spec.timeZone".into(),
            );
        }
        let line = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            _ => s,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        // Croner also knows Quartz extensions (L, W, #); Kubernetes' parser
        // does not, so the only letters allowed are month and weekday names.
        let upper = line.to_ascii_uppercase();
        if upper.contains('#') || !upper.split(|c: char| !c.is_ascii_alphabetic()).all(is_name) {
            return Err(format!("unsupported syntax in schedule: {s}"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(line)
            .map_err(|e| e.to_string())?;
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| format!("unknown time zone {name}"))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest fire time in `(earliest, now]`, and how many fire times
    /// that interval holds (counted up to just past [`TOO_MANY_MISSED`]).
    pub fn most_recent(
        &self,
        earliest: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, usize) {
        let last = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t > earliest);
        let Some(last) = last else {
            return (None, 0);
        };
        let mut n = 0;
        let mut t = earliest;
        while n <= TOO_MANY_MISSED {
            match self.next_after(t) {
                Some(x) if x <= last => {
                    n += 1;
                    t = x;
                }
                _ => break,
            }
        }
        (Some(last), n)
    }
}

/// Whether a run of letters in a schedule is a month or weekday name (or empty).
fn is_name(w: &str) -> bool {
    w.is_empty()
        || [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
        ]
        .contains(&w)
}

/// Whether a Job has finished (Complete or Failed), and whether it failed.
fn finished(job: &Value) -> Option<bool> {
    let status = job.get("status")?;
    if pods::condition(status, "Complete").is_some() {
        return Some(false);
    }
    if pods::condition(status, "Failed").is_some() {
        return Some(true);
    }
    None
}

fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "namespace": job.pointer("/metadata/namespace"),
        "name": job.pointer("/metadata/name"),
        "uid": job.pointer("/metadata/uid"),
    })
}

/// The Job name for a scheduled time.
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp().div_euclid(60))
}

/// The Job a CronJob runs at `scheduled`.
fn job_from_template(cj: &Value, scheduled: DateTime<Utc>, tz: &Tz) -> Value {
    let name = job_name(object::meta_str(cj, "name").unwrap_or(""), scheduled);
    let tmeta = cj
        .pointer("/spec/jobTemplate/metadata")
        .cloned()
        .unwrap_or(json!({}));
    let mut annotations = tmeta
        .get("annotations")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    annotations[SCHEDULED_TIMESTAMP] = json!(scheduled
        .with_timezone(tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut meta = json!({
        "name": name,
        "annotations": annotations,
        "ownerReferences": [pods::controller_ref(cj)],
    });
    if let Some(l) = tmeta.get("labels") {
        meta["labels"] = l.clone();
    }
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta,
        "spec": cj.pointer("/spec/jobTemplate/spec").cloned().unwrap_or(json!({})),
    })
}

/// Finished Jobs to delete beyond the history limits, oldest first.
fn over_history(children: &[Value], successful_limit: i64, failed_limit: i64) -> Vec<&Value> {
    let mut out = Vec::new();
    for (want_failed, limit) in [(false, successful_limit), (true, failed_limit)] {
        let mut done: Vec<&Value> = children
            .iter()
            .filter(|j| finished(j) == Some(want_failed) && !pods::is_deleting(j))
            .collect();
        done.sort_by_key(|j| {
            pods::time_at(j, "/status/startTime")
                .or_else(|| pods::time_at(j, "/metadata/creationTimestamp"))
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done.into_iter().take(extra));
    }
    out
}

/// The CronJob controller.
#[derive(Default)]
pub struct CronJobController;

impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self) -> Vec<Watch> {
        vec![Watch::primary(cronjobs()), Watch::owned(jobs(), "CronJob")]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.as_deref();
        let Some(cj) = client.get(cronjobs(), ns, &key.name)? else {
            return Ok(Action::AwaitChange);
        };
        if pods::is_deleting(&cj) {
            return Ok(Action::AwaitChange);
        }
        let uid = object::meta_str(&cj, "uid").unwrap_or("").to_string();
        let (all, _) = client.list(jobs(), ns, None)?;
        let children: Vec<Value> = all
            .into_iter()
            .filter(|j| pods::controlled_by(j, &uid))
            .collect();
        sync(client, &cj, &children, Utc::now()).await
    }
}

async fn sync(
    client: &LocalClient,
    cj: &Value,
    children: &[Value],
    now: DateTime<Utc>,
) -> Result<Action, ApiError> {
    let ns = object::meta_str(cj, "namespace")
        .unwrap_or("default")
        .to_string();
    let old_status = cj.get("status").cloned().unwrap_or(json!({}));
    let mut status = old_status.clone();
    let mut active: Vec<&Value> = children
        .iter()
        .filter(|j| finished(j).is_none() && !pods::is_deleting(j))
        .collect();
    let last_success = children
        .iter()
        .filter(|j| finished(j) == Some(false))
        .filter_map(|j| pods::time_at(j, "/status/completionTime"))
        .chain(pods::time_at(&old_status, "/lastSuccessfulTime"))
        .max();
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(pods::format_time(t));
    }

    for j in over_history(
        children,
        cj.pointer("/spec/successfulJobsHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(3),
        cj.pointer("/spec/failedJobsHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(1),
    ) {
        delete_job(client, cj, j).await?;
    }

    let mut requeue = None;
    let suspended = cj.pointer("/spec/suspend") == Some(&json!(true));
    let schedule = Schedule::parse(
        cj.pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or(""),
        cj.pointer("/spec/timeZone").and_then(Value::as_str),
    );
    match schedule {
        Err(msg) => {
            events::record(
                client,
                COMPONENT,
                cj,
                "Warning",
                "InvalidSchedule",
                &format!("invalid schedule: {msg}"),
            )
            .await;
        }
        Ok(_) if suspended => {}
        Ok(sched) => {
            let last = pods::time_at(&old_status, "/lastScheduleTime")
                .or_else(|| pods::time_at(cj, "/metadata/creationTimestamp"))
                .unwrap_or(now);
            // Times older than startingDeadlineSeconds are not started any more.
            let earliest = match cj
                .pointer("/spec/startingDeadlineSeconds")
                .and_then(Value::as_i64)
            {
                Some(d) => last.max(now - chrono::Duration::seconds(d)),
                None => last,
            };
            let (due, missed) = sched.most_recent(earliest, now);
            if missed > TOO_MANY_MISSED {
                events::record(client, COMPONENT, cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew").await;
            }
            if let Some(t) = due {
                let policy = cj
                    .pointer("/spec/concurrencyPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("Allow");
                if policy == "Forbid" && !active.is_empty() {
                    // Not recorded as scheduled: the run starts once the active
                    // Job ends, if still within the starting deadline.
                    events::record(client, COMPONENT, cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid").await;
                } else {
                    if policy == "Replace" {
                        for j in std::mem::take(&mut active) {
                            delete_job(client, cj, j).await?;
                        }
                    }
                    let job = job_from_template(cj, t, &sched.tz);
                    let created = match client.create(jobs(), Some(&ns), job).await {
                        Ok(j) => {
                            let name = object::meta_str(&j, "name").unwrap_or("");
                            events::record(
                                client,
                                COMPONENT,
                                cj,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created job {name}"),
                            )
                            .await;
                            Some(j)
                        }
                        // Made by an earlier pass for this same time.
                        Err(ApiError::AlreadyExists { .. }) => client.get(
                            jobs(),
                            Some(&ns),
                            &job_name(object::meta_str(cj, "name").unwrap_or(""), t),
                        )?,
                        Err(e) => return Err(e),
                    };
                    status["lastScheduleTime"] = json!(pods::format_time(t));
                    let mut refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
                    if let Some(j) = created.filter(|j| finished(j).is_none()) {
                        let r = job_ref(&j);
                        if !refs.contains(&r) {
                            refs.push(r);
                        }
                    }
                    status["active"] = json!(refs);
                }
            }
            if let Some(next) = sched.next_after(now) {
                requeue =
                    Some((next - now).to_std().unwrap_or_default() + Duration::from_millis(100));
            }
        }
    }
    if status.get("lastScheduleTime") == old_status.get("lastScheduleTime") {
        let refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
        status["active"] = json!(refs);
    }
    if status["active"].as_array().is_some_and(Vec::is_empty) {
        if let Some(m) = status.as_object_mut() {
            m.remove("active");
        }
    }
    if status != old_status {
        let mut updated = cj.clone();
        updated["status"] = status;
        client.update_status(cronjobs(), updated).await?;
    }
    Ok(requeue.map_or(Action::AwaitChange, Action::Requeue))
}

async fn delete_job(client: &LocalClient, cj: &Value, job: &Value) -> Result<(), ApiError> {
    let name = object::meta_str(job, "name").unwrap_or("");
    let opts = json!({"propagationPolicy": "Background", "preconditions": {"uid": job.pointer("/metadata/uid")}});
    if client
        .delete(jobs(), object::meta_str(job, "namespace"), name, &opts)
        .await?
    {
        events::record(
            client,
            COMPONENT,
            cj,
            "Normal",
            "SuccessfulDelete",
            &format!("Deleted job {name}"),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        pods::parse_time(s).unwrap()
    }

    fn next(s: &str, tz: Option<&str>, after: &str) -> String {
        pods::format_time(
            Schedule::parse(s, tz)
                .unwrap()
                .next_after(t(after))
                .unwrap(),
        )
    }

    #[test]
    fn next_fire_times() {
        assert_eq!(
            next("* * * * *", None, "2024-03-01T12:00:30Z"),
            "2024-03-01T12:01:00Z"
        );
        assert_eq!(
            next("* * * * *", None, "2024-03-01T12:00:00Z"),
            "2024-03-01T12:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", None, "2024-03-01T12:16:00Z"),
            "2024-03-01T12:30:00Z"
        );
        assert_eq!(
            next("5-10/5,30 * * * *", None, "2024-03-01T12:06:00Z"),
            "2024-03-01T12:10:00Z"
        );
        assert_eq!(
            next("5-10/5,30 * * * *", None, "2024-03-01T12:10:00Z"),
            "2024-03-01T12:30:00Z"
        );
        assert_eq!(
            next("@hourly", None, "2024-03-01T12:10:00Z"),
            "2024-03-01T13:00:00Z"
        );
        assert_eq!(
            next("@daily", None, "2024-03-01T12:10:00Z"),
            "2024-03-02T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", None, "2024-03-01T12:10:00Z"),
            "2025-01-01T00:00:00Z"
        );
        // 2024-03-01 is a Friday.
        assert_eq!(
            next("0 9 * * MON-FRI", None, "2024-03-01T10:00:00Z"),
            "2024-03-04T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", None, "2024-03-01T10:00:00Z"),
            "2024-07-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", None, "2024-03-01T10:00:00Z"),
            "2024-03-03T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches (cron's rule), so the 13th or a Friday.
        assert_eq!(
            next("0 0 13 * FRI", None, "2024-03-01T10:00:00Z"),
            "2024-03-08T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * FRI", None, "2024-03-09T10:00:00Z"),
            "2024-03-13T00:00:00Z"
        );
        // One restricted: only it counts.
        assert_eq!(
            next("0 0 13 * *", None, "2024-03-01T10:00:00Z"),
            "2024-03-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * FRI", None, "2024-03-02T10:00:00Z"),
            "2024-03-08T00:00:00Z"
        );
    }

    #[test]
    fn time_zones() {
        // 09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
        assert_eq!(
            next(
                "0 9 * * *",
                Some("America/New_York"),
                "2024-01-15T00:00:00Z"
            ),
            "2024-01-15T14:00:00Z"
        );
        assert_eq!(
            next(
                "0 9 * * *",
                Some("America/New_York"),
                "2024-07-15T00:00:00Z"
            ),
            "2024-07-15T13:00:00Z"
        );
        // Across the spring-forward change (2024-03-10): the 09:00 after it is EDT.
        assert_eq!(
            next(
                "0 9 * * *",
                Some("America/New_York"),
                "2024-03-09T15:00:00Z"
            ),
            "2024-03-10T13:00:00Z"
        );
        assert_eq!(
            next("30 0 * * *", Some("Asia/Kolkata"), "2024-03-01T00:00:00Z"),
            "2024-03-01T19:00:00Z"
        );
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "@every 5m",
            "0 0 L * *",
            "0 0 * * 5#2",
            "TZ=UTC * * * * *",
            "",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
        assert!(Schedule::parse("0 0 * jul sat", None).is_ok());
    }

    #[test]
    fn most_recent_unmet_time() {
        let s = Schedule::parse("*/10 * * * *", None).unwrap();
        let (due, n) = s.most_recent(t("2024-03-01T12:00:00Z"), t("2024-03-01T12:35:00Z"));
        assert_eq!(due, Some(t("2024-03-01T12:30:00Z")));
        assert_eq!(n, 3);
        assert_eq!(
            s.most_recent(t("2024-03-01T12:30:00Z"), t("2024-03-01T12:35:00Z")),
            (None, 0)
        );
        let (due, n) = s.most_recent(t("2023-03-01T12:00:00Z"), t("2024-03-01T12:35:00Z"));
        assert_eq!(due, Some(t("2024-03-01T12:30:00Z")));
        assert!(n > TOO_MANY_MISSED);
    }

    #[test]
    fn jobs_are_named_by_scheduled_minute() {
        assert_eq!(
            job_name("backup", t("2024-03-01T12:30:00Z")),
            "backup-28488270"
        );
        let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "backup", "uid": "u"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"backoffLimit": 1}}}});
        let j = job_from_template(&cj, t("2024-03-01T12:30:00Z"), &Tz::Europe__Berlin);
        assert_eq!(j["metadata"]["name"], "backup-28488270");
        assert_eq!(j["metadata"]["labels"]["a"], "b");
        assert_eq!(
            j["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
            "2024-03-01T13:30:00+01:00"
        );
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(j["spec"]["backoffLimit"], 1);
    }

    #[test]
    fn history_limits_keep_the_newest() {
        let job = |n: &str, failed: bool, start: &str| {
            let c = if failed { "Failed" } else { "Complete" };
            json!({"metadata": {"name": n}, "status": {"startTime": start, "conditions": [{"type": c, "status": "True"}]}})
        };
        let children = vec![
            job("s1", false, "2024-01-01T00:01:00Z"),
            job("s2", false, "2024-01-01T00:02:00Z"),
            job("s3", false, "2024-01-01T00:03:00Z"),
            job("f1", true, "2024-01-01T00:01:00Z"),
            job("f2", true, "2024-01-01T00:02:00Z"),
            json!({"metadata": {"name": "running"}}),
        ];
        let names: Vec<&str> = over_history(&children, 2, 1)
            .into_iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["s1", "f1"]);
    }
}
