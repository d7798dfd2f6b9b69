//! `shoal plugin …`: upload modules and manage Plugin objects, finding the
//! cluster the way kubectl does (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`).

use anyhow::{bail, Context};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The profile pods get without `spec.schedulerName`.
const DEFAULT_PROFILE: &str = "default-scheduler";

/// `shoal plugin` subcommands.
#[derive(clap::Subcommand)]
pub enum PluginCmd {
    /// Upload a component and create or update its Plugin object (hot-swapped, no restart).
    Install {
        /// World the component implements: scheduler, admission, authorizer or router.
        #[arg(long)]
        kind: String,
        /// Plugin name (for schedulers, also the profile pods select with spec.schedulerName).
        #[arg(long)]
        name: String,
        /// The component file (.wasm).
        file: PathBuf,
        /// Configuration passed to the plugin, as JSON.
        #[arg(long)]
        config: Option<String>,
        /// Scheduler plugins: also make this the policy of the default profile.
        #[arg(long)]
        default: bool,
        /// Scheduler plugins: profiles (spec.schedulerName values) this policy
        /// scores; repeatable. Default: the plugin's name.
        #[arg(long = "profile")]
        profiles: Vec<String>,
        /// Scheduler plugins: weight of this policy's scores.
        #[arg(long)]
        weight: Option<u32>,
        /// Admission plugins: which requests they see, and how they fail.
        #[command(flatten)]
        admission: Box<AdmissionArgs>,
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Seconds to wait for the plugin to become Ready.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List plugins with their kind, digest and state.
    List {
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Make an installed scheduler plugin the policy of the default profile.
    SetDefault {
        /// Plugin name.
        name: String,
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

/// `shoal plugin install` flags for admission plugins (`spec.admission`, `spec.order`).
#[derive(clap::Args)]
pub struct AdmissionArgs {
    /// Admission plugins: mutating (may return a JSON patch; runs before validation) instead of validating.
    #[arg(long)]
    mutating: bool,
    /// Admission plugins: operations to review, comma-separated (CREATE, UPDATE, DELETE, CONNECT, *).
    #[arg(long, default_value = "CREATE,UPDATE")]
    operations: String,
    /// Admission plugins: resources to review, comma-separated (pods, deployments, pods/status, *).
    #[arg(long, default_value = "pods")]
    resources: String,
    /// Admission plugins: API groups, comma-separated ("" is core; * is any).
    #[arg(long, default_value = "*")]
    api_groups: String,
    /// Admission plugins: what a trap or timeout means: Fail (refuse the request) or Ignore.
    #[arg(long, default_value = "Fail")]
    failure_policy: String,
    /// Admission plugins: deadline of one call, in seconds (at most 30; default 10).
    #[arg(long)]
    timeout_seconds: Option<f64>,
    /// Admission plugins: position in its phase (ascending).
    #[arg(long)]
    order: Option<i64>,
    /// Admission plugins: only namespaces with these labels (key=value,...).
    #[arg(long)]
    namespace_selector: Option<String>,
}

impl AdmissionArgs {
    fn list(s: &str) -> Vec<String> {
        s.split(',').map(|x| x.trim().to_string()).collect()
    }

    /// Whether any admission-only flag differs from its default.
    fn given(&self) -> bool {
        self.mutating
            || self.operations != "CREATE,UPDATE"
            || self.resources != "pods"
            || self.api_groups != "*"
            || self.failure_policy != "Fail"
            || self.timeout_seconds.is_some()
            || self.order.is_some()
            || self.namespace_selector.is_some()
    }

    /// The `spec.admission` object (the server validates it).
    fn spec(&self) -> anyhow::Result<Value> {
        let mut spec = json!({
            "type": if self.mutating { "Mutating" } else { "Validating" },
            "rules": [{
                "operations": Self::list(&self.operations.to_ascii_uppercase()),
                "apiGroups": Self::list(&self.api_groups),
                "apiVersions": ["*"],
                "resources": Self::list(&self.resources),
            }],
            "failurePolicy": self.failure_policy,
        });
        if let Some(t) = self.timeout_seconds {
            spec["timeoutSeconds"] = json!(t);
        }
        if let Some(sel) = &self.namespace_selector {
            let mut labels = serde_json::Map::new();
            for pair in sel.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--namespace-selector takes key=value pairs, not {pair:?}");
                };
                labels.insert(k.trim().to_string(), json!(v.trim()));
            }
            spec["namespaceSelector"] = json!({"matchLabels": labels});
        }
        Ok(spec)
    }
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn plugins(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("plugins.shoal.dev", "v1alpha1", "Plugin"),
        "plugins",
    );
    Api::all_with(client, &ar)
}

/// Turn a client error into the server's own message.
fn explain(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{} ({})", s.message, s.code),
        other => anyhow::anyhow!(other),
    }
}

fn digest_of(bytes: &[u8]) -> String {
    shoal_host::blobs::digest_of(bytes)
}

/// Run a `shoal plugin` subcommand.
pub async fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Install {
            kind,
            name,
            file,
            config,
            default,
            profiles,
            weight,
            admission,
            kubeconfig,
            timeout,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if !bytes.starts_with(b"\0asm") {
                bail!("{} is not a WebAssembly file", file.display());
            }
            if default && kind != "scheduler" {
                bail!("--default only applies to scheduler plugins");
            }
            let config: Option<Value> = match config {
                Some(c) => Some(serde_json::from_str(&c).context("--config must be JSON")?),
                None => None,
            };
            let client = client(kubeconfig.as_deref()).await?;
            let digest = digest_of(&bytes);
            let req = http::Request::put(format!("/shoal/v1/blobs/{digest}")).body(bytes)?;
            client
                .request_text(req)
                .await
                .map_err(explain)
                .context("uploading the module")?;
            let api = plugins(client.clone());
            let mut spec = json!({"kind": kind, "digest": digest});
            if let Some(c) = config {
                spec["config"] = c;
            }
            if let Some(w) = weight {
                spec["weight"] = json!(w);
            }
            if !profiles.is_empty() {
                spec["profiles"] = json!(profiles);
            }
            if kind == "admission" {
                spec["admission"] = admission.spec()?;
                if let Some(o) = admission.order {
                    spec["order"] = json!(o);
                }
            } else if admission.given() {
                bail!("--mutating, --operations, --resources, --failure-policy, --timeout-seconds, --order and --namespace-selector only apply to admission plugins");
            }
            let existing = api.get_opt(&name).await.map_err(explain)?;
            if default {
                let mut profiles: Vec<String> = spec
                    .get("profiles")
                    .cloned()
                    .or_else(|| {
                        existing
                            .as_ref()
                            .and_then(|o| o.data.pointer("/spec/profiles").cloned())
                    })
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_else(|| vec![name.clone()]);
                if !profiles.iter().any(|p| p == DEFAULT_PROFILE) {
                    profiles.push(DEFAULT_PROFILE.into());
                }
                spec["profiles"] = json!(profiles);
            }
            let obj = match existing {
                Some(_) => api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": spec})),
                    )
                    .await
                    .map_err(explain)?,
                None => {
                    let obj: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": "plugins.shoal.dev/v1alpha1", "kind": "Plugin",
                        "metadata": {"name": name}, "spec": spec,
                    }))?;
                    api.create(&PostParams::default(), &obj)
                        .await
                        .map_err(explain)?
                }
            };
            let generation = obj.metadata.generation.unwrap_or(1);
            let state = wait_ready(&api, &name, generation, Duration::from_secs(timeout)).await?;
            if default {
                take_default_profile(&api, &name, Duration::from_secs(timeout)).await?;
            }
            println!("plugin {name} ({kind}, {digest}) is {state}");
            Ok(())
        }
        PluginCmd::List { kubeconfig } => {
            let api = plugins(client(kubeconfig.as_deref()).await?);
            let list = api.list(&Default::default()).await.map_err(explain)?;
            println!(
                "{:<20} {:<11} {:<20} {:<30} {:<7} REASON",
                "NAME", "KIND", "DIGEST", "PROFILES", "STATE"
            );
            for p in list.items {
                let s = |ptr: &str| {
                    p.data
                        .pointer(ptr)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let digest = s("/spec/digest");
                let short = digest
                    .strip_prefix("sha256:")
                    .map(|h| h.chars().take(12).collect())
                    .unwrap_or(digest);
                let profiles = p
                    .data
                    .pointer("/spec/profiles")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                println!(
                    "{:<20} {:<11} {:<20} {:<30} {:<7} {}",
                    p.metadata.name.unwrap_or_default(),
                    s("/spec/kind"),
                    short,
                    profiles,
                    s("/status/state"),
                    s("/status/reason")
                );
            }
            Ok(())
        }
        PluginCmd::SetDefault { name, kubeconfig } => {
            let api = plugins(client(kubeconfig.as_deref()).await?);
            let p = api.get(&name).await.map_err(explain)?;
            if p.data.pointer("/spec/kind").and_then(Value::as_str) != Some("scheduler") {
                bail!("plugin {name} is not a scheduler plugin");
            }
            let mut profiles: Vec<String> = p
                .data
                .pointer("/spec/profiles")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_else(|| vec![name.clone()]);
            if !profiles.iter().any(|x| x == DEFAULT_PROFILE) {
                profiles.push(DEFAULT_PROFILE.into());
            }
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"profiles": profiles}})),
            )
            .await
            .map_err(explain)?;
            take_default_profile(&api, &name, Duration::from_secs(60)).await?;
            println!("plugin {name} now scores the {DEFAULT_PROFILE} profile");
            Ok(())
        }
    }
}

/// Remove the default profile from every other scheduler plugin.
async fn take_default_profile(
    api: &Api<DynamicObject>,
    keep: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    for p in api.list(&Default::default()).await.map_err(explain)?.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        if name == keep || p.data.pointer("/spec/kind").and_then(Value::as_str) != Some("scheduler")
        {
            continue;
        }
        let profiles: Vec<String> = p
            .data
            .pointer("/spec/profiles")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec![name.clone()]);
        if profiles.iter().any(|x| x == DEFAULT_PROFILE) {
            let rest: Vec<&String> = profiles
                .iter()
                .filter(|x| x.as_str() != DEFAULT_PROFILE)
                .collect();
            let o = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"profiles": rest}})),
                )
                .await
                .map_err(explain)?;
            // Wait until the scheduler has the change, so "after the swap" means it.
            wait_ready(api, &name, o.metadata.generation.unwrap_or(1), timeout).await?;
        }
    }
    Ok(())
}

/// Wait (watching the object) until the controller has looked at `generation`.
async fn wait_ready(
    api: &Api<DynamicObject>,
    name: &str,
    generation: i64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let cond = move |o: Option<&DynamicObject>| {
        o.is_some_and(|o| {
            let observed = o
                .data
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            observed >= generation
                && o.data
                    .pointer("/status/state")
                    .and_then(Value::as_str)
                    .is_some()
        })
    };
    let obj = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, cond),
    )
    .await
    .with_context(|| format!("plugin {name} did not report a state within {timeout:?}"))??
    .context("the plugin was deleted while waiting")?;
    let state = obj
        .data
        .pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if state == "Failed" {
        let reason = obj
            .data
            .pointer("/status/reason")
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("plugin {name} failed: {reason}");
    }
    Ok(state)
}
