//! `shoal-bench`: benchmark commands for Shoal.
//!
//! Every command prints exactly one JSON line of figures LAST on stdout;
//! progress and diagnostics go to stderr. Benchmarks are commands, never timed
//! tests: run them in release mode, e.g.
//! `cargo run --release -p shoal-bench -- api`.

mod admission;
mod api;
mod common;
mod deployment;
mod dns;
mod podstartup;
mod proxy;
mod rbac;
mod scheduler;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Shoal benchmarks; each prints one JSON line of figures last on stdout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API server: durable ConfigMap creates over HTTPS at 1 and 64 clients, and server RSS.
    Api(api::Args),
    /// Admission: pod-create latency added by 0, 1, 5 and 10 admission plugins (Rust, Python), and one plugin call alone.
    Admission(admission::Args),
    /// Scheduler: N simulated nodes, M pending pods scheduled end to end, Wasm vs native policies.
    Scheduler(scheduler::Args),
    /// Deployment: one Deployment of R replicas on N simulated nodes, until every pod is bound.
    Deployment(deployment::Args),
    /// Pod startup on a real node (server + agent + runc): create → Running latency at a rate and in a burst, agent RSS.
    Podstartup(podstartup::Args),
    /// Service proxy: nftables full sync, one endpoint change and one new service at 1,000 and 10,000 services (in a network namespace).
    Proxy(proxy::Args),
    /// Cluster DNS: queries/s of the agent's DNS server on one core (A and NXDOMAIN), over loopback UDP.
    Dns(dns::Args),
    /// RBAC: decisions/s through the Wasm authorizer plugin with 10,000 bindings (in-process).
    Rbac(rbac::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (line, complete) = match cli.command {
        Command::Api(a) => (rt.block_on(api::run(a))?, true),
        Command::Admission(a) => (rt.block_on(admission::run(a))?, true),
        Command::Scheduler(a) => rt.block_on(scheduler::run(a))?,
        Command::Deployment(a) => rt.block_on(deployment::run(a))?,
        Command::Podstartup(a) => rt.block_on(podstartup::run(a))?,
        Command::Proxy(a) => (proxy::run(a)?, true),
        Command::Dns(a) => (rt.block_on(dns::run(a))?, true),
        Command::Rbac(a) => (rbac::run(a)?, true),
    };
    // Drop the runtime (and any lingering connection tasks) before the final line.
    drop(rt);
    println!("{line}");
    if !complete {
        // The figures are printed, but some run failed (its entry says why).
        std::process::exit(1);
    }
    Ok(())
}
