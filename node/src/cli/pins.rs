//! `hf-mirror mirror` and `hf-mirror pins`: the operator's side of pins, through a node's
//! `/_hfm/pins` and `/_hfm/status`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::operator::OperatorClient;
use crate::common::units::human_bytes;

/// `hf-mirror mirror`: pins a repository through a node and follows the fill until every live node
/// holds every file (a progress bar on a terminal, plain lines otherwise). Interrupting it stops only
/// the watching; the nodes go on, and running it again picks up where they are.
pub async fn mirror_command(
    url: &str,
    token_file: &Path,
    repo: &str,
    repo_type: &str,
    revision: &str,
    unpin_it: bool,
) -> anyhow::Result<()> {
    let client = OperatorClient::new(token_file, Duration::from_secs(600))?;
    let base = url.trim_end_matches('/');
    let query = format!("repo={}&type={}&revision={}", urlencode(repo), urlencode(repo_type), urlencode(revision));
    if unpin_it {
        client.call(Method::DELETE, base, &format!("/_hfm/pins?{query}")).await?;
        println!("unpinned {repo_type} {repo}");
        return Ok(());
    }
    let pinned = client.call(Method::POST, base, &format!("/_hfm/pins?{query}")).await?;
    let commit = pinned["commit"].as_str().unwrap_or("?").to_owned();
    let (files, bytes) = (pinned["files"].as_u64().unwrap_or(0), pinned["bytes"].as_u64().unwrap_or(0));
    println!("pinned {repo_type} {repo}@{revision} = {commit}: {files} files, {}", human_bytes(bytes as f64));
    // On a terminal, an indicatif bar that redraws in place; otherwise a plain line every 5 s.
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar
    });
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let status = client.get(base, "/_hfm/pins").await?;
        let live = client.get(base, "/_hfm/status").await.map(|status| super::status::live_members(&status)).unwrap_or_default();
        let pin = status["pins"]
            .as_array()
            .and_then(|pins| pins.iter().find(|pin| pin["repo"] == repo && pin["type"] == repo_type).cloned())
            .context("the pin is gone (unpinned meanwhile?)")?;
        let nodes = pin["nodes"].as_object().cloned().unwrap_or_default();
        let watched: Vec<(&String, &Value)> = nodes.iter().filter(|(name, _)| live.is_empty() || live.contains(*name)).collect();
        let held_bytes: u64 = watched.iter().map(|(_, node)| node["bytes"].as_u64().unwrap_or(0)).sum();
        let wanted_bytes = bytes.saturating_mul(watched.len() as u64).max(1);
        let complete = watched.iter().filter(|(_, node)| node["complete"] == true).count();
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let rate = held_bytes as f64 / elapsed;
        let eta = if rate > 0.0 { format!("{:.0}s", (wanted_bytes.saturating_sub(held_bytes)) as f64 / rate) } else { "?".into() };
        let line = format!(
            "{complete}/{} nodes complete, {} of {} ({:.0}%), {}/s, ETA {eta}",
            watched.len(),
            human_bytes(held_bytes as f64),
            human_bytes(wanted_bytes as f64),
            100.0 * held_bytes as f64 / wanted_bytes as f64,
            human_bytes(rate)
        );
        let done = !watched.is_empty() && complete == watched.len();
        if let Some(bar) = &bar {
            bar.set_length(wanted_bytes);
            bar.set_position(held_bytes);
            bar.set_message(format!("{complete}/{} nodes complete", watched.len()));
        } else if done || last_line.elapsed() >= Duration::from_secs(5) {
            println!("{line}");
            last_line = Instant::now();
        }
        if done {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
                println!("{line}");
            }
            println!("{repo_type} {repo}@{commit} is on every live node");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `hf-mirror pins`: every pin with its commit and per-node completeness.
pub async fn print_pins(url: &str, token_file: &Path) -> anyhow::Result<()> {
    let client = OperatorClient::new(token_file, Duration::from_secs(60))?;
    let status = client.get(url, "/_hfm/pins").await?;
    let pins = status["pins"].as_array().cloned().unwrap_or_default();
    if pins.is_empty() {
        println!("no pins");
    }
    for pin in pins {
        println!(
            "{} {}@{} = {} ({} files, {})",
            pin["type"].as_str().unwrap_or("?"),
            pin["repo"].as_str().unwrap_or("?"),
            pin["revision"].as_str().unwrap_or("?"),
            pin["commit"].as_str().unwrap_or("?"),
            pin["files"].as_u64().unwrap_or(0),
            human_bytes(pin["bytes"].as_u64().unwrap_or(0) as f64)
        );
        for (node, held) in pin["nodes"].as_object().into_iter().flatten() {
            println!(
                "  {node:<8} {:>6}/{} files  {}{}",
                held["files"].as_u64().unwrap_or(0),
                pin["files"].as_u64().unwrap_or(0),
                human_bytes(held["bytes"].as_u64().unwrap_or(0) as f64),
                if held["complete"] == true { "  complete" } else { "" }
            );
        }
    }
    Ok(())
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
