//! `hf-mirror status` and `hf-mirror drain`: the operator's view of the nodes, through their
//! operator ports' `/_hfm/` routes.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::operator::OperatorClient;

/// The names a node's `/_hfm/status` reports live (ready, not draining).
pub fn live_members(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|member| member["state"] == "live")
                .filter_map(|member| member["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The share of answers of one kind (`answers`: downloads, `metadata_answers`) served without asking
/// upstream for data.
fn hit_ratio(status: &Value, kind: &str) -> String {
    let answers = &status[kind];
    let count = |key: &str| answers[key].as_u64().unwrap_or(0);
    let (hit, revalidated, miss) = (count("hit"), count("revalidated"), count("miss"));
    let total = hit + revalidated + miss;
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}% of {total}", 100.0 * (hit + revalidated) as f64 / total as f64)
}

/// The rsync daemon's column: `up`, `down`, with its restarts; `-` without a daemon.
fn rsync_text(status: Option<&Value>) -> String {
    let Some(rsync) = status.map(|status| &status["rsync"]).filter(|rsync| rsync.is_object()) else { return "-".into() };
    let state = if rsync["running"] == true { "up" } else { "down" };
    match rsync["restarts"].as_u64().unwrap_or(0) {
        0 => state.into(),
        restarts => format!("{state} ({restarts} restarts)"),
    }
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), |bytes| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64))
}

/// Prints one line per node: state, stored bytes, free disk, the hit ratios of file downloads and of
/// metadata, its rsync daemon, and its Raft role; then the catalog's leader, voters and learners.
/// With `json`, one JSON document instead: `{"node": own status, "members": [{name, state,
/// status}]}` where each member's `status` is its own `/_hfm/status` (null when unreachable).
pub async fn print_status(url: &str, token_file: &Path, json: bool) -> anyhow::Result<()> {
    let client = OperatorClient::new(token_file, Duration::from_secs(5))?;
    let own = client.get(url, "/_hfm/status").await?;
    let mut members = Vec::new();
    for member in own["members"].as_array().into_iter().flatten() {
        let state = member["state"].as_str().unwrap_or("?");
        // Each node's details come from its own operator port (the cluster shares one token).
        let remote = match member["operator_url"].as_str() {
            Some(member_url) if state != "dead" => client.get(member_url, "/_hfm/status").await.ok(),
            _ => None,
        };
        members.push((member.clone(), remote));
    }
    if json {
        let members: Vec<Value> = members
            .into_iter()
            .map(|(member, remote)| serde_json::json!({"name": member["name"], "state": member["state"], "status": remote}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"node": own, "members": members}))?);
        return Ok(());
    }
    print_table(&own, &members);
    Ok(())
}

fn print_table(own: &Value, members: &[(Value, Option<Value>)]) {
    println!(
        "{:<8} {:<9} {:>7} {:>12} {:>12} {:>18} {:>18}  {:<16} {}",
        "node", "state", "blobs", "stored", "free disk", "hits (downloads)", "hits (metadata)", "rsync", "raft"
    );
    if own["members"].as_array().is_none() {
        let store = &own["store"];
        println!(
            "{:<8} {:<9} {:>7} {:>12} {:>12} {:>18} {:>18}  {:<16} {}",
            own["node"].as_str().unwrap_or("?"),
            "live",
            store["blobs"].as_u64().unwrap_or(0),
            gib(store["stored_bytes"].as_u64()),
            "-",
            hit_ratio(own, "answers"),
            hit_ratio(own, "metadata_answers"),
            rsync_text(Some(own)),
            "single node"
        );
        return;
    }
    for (member, remote) in members {
        let store = remote.as_ref().map(|status| status["store"].clone()).unwrap_or(Value::Null);
        let raft = remote.as_ref().map(|status| status["raft"].clone()).unwrap_or(Value::Null);
        let raft_text = match (raft["state"].as_str(), raft["term"].as_u64()) {
            (Some(role), Some(term)) => {
                format!("{role}, term {term}, applied {}", raft["last_applied"].as_u64().map_or("-".into(), |index| index.to_string()))
            }
            _ => "-".into(),
        };
        println!(
            "{:<8} {:<9} {:>7} {:>12} {:>12} {:>18} {:>18}  {:<16} {}",
            member["name"].as_str().unwrap_or("?"),
            member["state"].as_str().unwrap_or("?"),
            store["blobs"].as_u64().map_or_else(|| "-".into(), |blobs| blobs.to_string()),
            gib(store["stored_bytes"].as_u64()),
            gib(member["free_disk"].as_u64()),
            remote.as_ref().map_or_else(|| "-".into(), |status| hit_ratio(status, "answers")),
            remote.as_ref().map_or_else(|| "-".into(), |status| hit_ratio(status, "metadata_answers")),
            rsync_text(remote.as_ref()),
            raft_text
        );
    }
    let raft = &own["raft"];
    match (raft["leader"].as_u64(), raft["leader_name"].as_str()) {
        (Some(leader), name) => {
            println!("catalog leader: {} (raft id {leader}), term {}", name.unwrap_or("?"), raft["term"].as_u64().unwrap_or(0))
        }
        (None, _) => println!("catalog leader: none (no quorum)"),
    }
    let list = |key: &str| {
        let names: Vec<&str> = raft[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if names.is_empty() { "none".to_owned() } else { names.join(" ") }
    };
    println!("catalog voters: {}", list("voters"));
    println!("catalog learners: {}", list("learners"));
}

/// Asks a node to drain and prints what it did.
pub async fn drain(url: &str, token_file: &Path) -> anyhow::Result<()> {
    // Draining waits for the node's fills, which may take minutes.
    let client = OperatorClient::new(token_file, Duration::from_secs(900))?;
    let answer = client.call(reqwest::Method::POST, url, "/_hfm/drain").await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
