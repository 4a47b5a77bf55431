//! The mirror's own public pages: `/` (what the mirror is, how to use it, its limits, rsync, the
//! peer mirrors with their live state, privacy and terms) and `/status` (every node's state and
//! figures, the catalog leader, the most requested repositories of the last days).
//!
//! Server-rendered HTML with no JavaScript, no third-party asset and no cookie (the privacy
//! promise); `Accept: application/json` on the same paths gives the same facts as JSON. Hub clients
//! never ask for these two paths, so no Hub route changes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::response::Response;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::operator::Operator;
use super::{EdgeSettings, public_origin, require_read};
use crate::config::limits::LimitsConfig;
use crate::config::site::{SiteConfig, SiteNode};
use crate::hub::HubError;
use crate::store::BlobStore;
use crate::telemetry::{AnswerCounters, ByteSource, metrics};

/// How many days the status page ranks repositories over, and how many it shows.
const TOP_DAYS: u64 = 7;
const TOP_COUNT: usize = 20;
/// The ranking is read from the daily aggregates at most this often.
const TOP_REFRESH: Duration = Duration::from_secs(600);

/// A node's public figures: what it stores and how it answered. Published in gossip
/// ([`hfm_cluster::membership::keys::STATS`]) so that every node's status page shows every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub stored_bytes: u64,
    pub blobs: u64,
    /// File downloads answered from what the mirror held (HIT), after asking upstream whether it
    /// was current (REVALIDATED), and by fetching (MISS).
    pub hits: u64,
    pub revalidated: u64,
    pub misses: u64,
    /// File bytes sent to clients from this node's disk: bytes upstream did not have to send.
    pub served_from_disk: u64,
    pub fetched_from_peers: u64,
    pub fetched_from_upstream: u64,
}

impl Figures {
    /// This process's figures now.
    pub fn of(store: &BlobStore, answers: &AnswerCounters) -> Figures {
        let usage = store.usage();
        let (hits, revalidated, misses) = answers.snapshot();
        let counted = |source| metrics().bytes_total(source);
        Figures {
            stored_bytes: usage.stored_bytes,
            blobs: usage.num_blobs as u64,
            hits,
            revalidated,
            misses,
            served_from_disk: counted(ByteSource::Disk),
            fetched_from_peers: counted(ByteSource::Peer),
            fetched_from_upstream: counted(ByteSource::Upstream),
        }
    }

    fn hit_ratio(&self) -> Option<f64> {
        let answered = self.hits + self.revalidated + self.misses;
        (answered > 0).then(|| (self.hits + self.revalidated) as f64 / answered as f64)
    }
}

/// One node's row on the pages.
#[derive(Clone, Debug, Serialize)]
struct NodeRow {
    name: String,
    /// `live`, `starting`, `draining` or `dead` (from gossip; a single node is `live`).
    state: &'static str,
    version: Option<String>,
    free_disk: Option<u64>,
    figures: Option<Figures>,
    hit_ratio: Option<f64>,
}

/// What the pages read: the operator's texts, the edge's settings and limits, and the node's live
/// state (through the operator's handles).
pub struct Site {
    pub config: SiteConfig,
    pub settings: EdgeSettings,
    pub limits: LimitsConfig,
    /// Whether the HTTP port also speaks TLS (then HTTP/2 by ALPN and HTTP/3).
    pub tls: bool,
    pub rsync: bool,
    pub access_log_dir: Option<PathBuf>,
    /// The data directory, whose file system's free space a single node shows.
    pub data_dir: PathBuf,
    pub operator: Arc<Operator>,
    /// The ranking of repositories and when it was read.
    top: Mutex<Option<(Instant, Arc<Vec<(String, u64)>>)>>,
}

impl Site {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SiteConfig,
        settings: EdgeSettings,
        limits: LimitsConfig,
        tls: bool,
        rsync: bool,
        access_log_dir: Option<PathBuf>,
        data_dir: PathBuf,
        operator: Arc<Operator>,
    ) -> Site {
        Site { config, settings, limits, tls, rsync, access_log_dir, data_dir, operator, top: Mutex::new(None) }
    }

    /// `/`.
    pub(super) fn home(&self, parts: &Parts) -> Result<Response, HubError> {
        require_read(&parts.method)?;
        let endpoint = public_origin(&self.settings, parts);
        let rows = self.rows();
        if wants_json(parts) {
            return Ok(json_page(&parts.method, &self.home_json(&endpoint, &rows)));
        }
        Ok(html_page(&parts.method, &self.home_html(&endpoint, &rows)))
    }

    /// `/status`.
    pub(super) async fn status(&self, parts: &Parts) -> Result<Response, HubError> {
        require_read(&parts.method)?;
        let rows = self.rows();
        let top = self.top_repositories().await;
        let leader = self.catalog_leader();
        if wants_json(parts) {
            return Ok(json_page(&parts.method, &self.status_json(&rows, leader.as_deref(), &top)));
        }
        Ok(html_page(&parts.method, &self.status_html(&rows, leader.as_deref(), &top)))
    }

    /// Every node of the topology with its state and figures: its own figures for this node, the
    /// gossiped ones for the others.
    fn rows(&self) -> Vec<NodeRow> {
        let operator = &self.operator;
        let own = Figures::of(&operator.store, &operator.file_answers);
        let Some((peers, ..)) = &operator.cluster else {
            let hit_ratio = own.hit_ratio();
            return vec![NodeRow {
                name: operator.node_name.clone(),
                state: "live",
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                free_disk: rustix::fs::statvfs(&self.data_dir).ok().map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize)),
                figures: Some(own),
                hit_ratio,
            }];
        };
        let view = peers.view();
        peers
            .member_states()
            .into_iter()
            .map(|(name, state)| {
                let member = view.members.get(&name);
                let figures = if name == operator.node_name {
                    Some(own.clone())
                } else {
                    member.and_then(|member| serde_json::from_str::<Figures>(member.stats.as_deref()?).ok())
                };
                NodeRow {
                    hit_ratio: figures.as_ref().and_then(Figures::hit_ratio),
                    version: member.and_then(|member| member.version.clone()),
                    free_disk: member.and_then(|member| member.free_disk),
                    figures,
                    name,
                    state,
                }
            })
            .collect()
    }

    fn catalog_leader(&self) -> Option<String> {
        let (_, raft, _) = self.operator.cluster.as_ref()?;
        let status = raft.status();
        status.leader.and_then(|id| status.name_of(id)).map(str::to_owned)
    }

    /// The most requested repositories of the last [`TOP_DAYS`] complete days, re-read from the
    /// daily aggregates at most every [`TOP_REFRESH`].
    async fn top_repositories(&self) -> Arc<Vec<(String, u64)>> {
        if let Some((read_at, top)) = self.top.lock().expect("site cache poisoned").as_ref()
            && read_at.elapsed() < TOP_REFRESH
        {
            return top.clone();
        }
        let Some(directory) = self.access_log_dir.clone() else { return Arc::default() };
        let read = tokio::task::spawn_blocking(move || {
            crate::telemetry::daily::top_repositories(&directory, SystemTime::now(), TOP_DAYS, TOP_COUNT)
        });
        let top = Arc::new(read.await.unwrap_or_default());
        *self.top.lock().expect("site cache poisoned") = Some((Instant::now(), top.clone()));
        top
    }

    fn home_json(&self, endpoint: &str, rows: &[NodeRow]) -> Value {
        let site = &self.config;
        let peers: Vec<Value> = site
            .nodes
            .iter()
            .map(|node| {
                let state = rows.iter().find(|row| row.name == node.name).map_or("dead", |row| row.state);
                json!({
                    "name": node.name, "city": node.city, "country": node.country, "operator": node.operator,
                    "bandwidth_gbps": node.bandwidth_gbps, "storage": node.storage, "state": state,
                })
            })
            .collect();
        let quota = &self.limits.default;
        json!({
            "title": site.title,
            "operator": site.operator,
            "contact": site.contact,
            "about": site.about,
            "endpoint": endpoint,
            "mirrors": ["public models", "public datasets"],
            "passes_through": ["spaces", "private repositories", "gated repositories"],
            "protocols": self.protocols(),
            "limits": {
                "requests_per_second": quota.requests_per_second, "burst": quota.burst,
                "parallel_requests": quota.parallel, "daily_bytes": quota.daily_bytes,
                "cold_fills_per_client": self.limits.cold_fills_per_client,
            },
            "rsync": self.rsync.then(|| json!({
                "host": site.rsync_name, "modules": ["models", "datasets", "indexes"],
            })),
            "peers": peers,
            "privacy": site.privacy,
            "terms": site.terms,
        })
    }

    fn status_json(&self, rows: &[NodeRow], leader: Option<&str>, top: &[(String, u64)]) -> Value {
        let totals = totals(rows);
        json!({
            "nodes": rows,
            "catalog_leader": leader,
            "totals": totals,
            "top_repositories": top.iter().map(|(repo, requests)| json!({"repo": repo, "requests": requests})).collect::<Vec<_>>(),
            "top_repositories_days": TOP_DAYS,
        })
    }

    fn protocols(&self) -> Vec<&'static str> {
        if self.tls { vec!["HTTP/1.1", "HTTP/2", "HTTP/3"] } else { vec!["HTTP/1.1", "HTTP/2 (cleartext, prior knowledge)"] }
    }

    fn home_html(&self, endpoint: &str, rows: &[NodeRow]) -> String {
        let site = &self.config;
        let prefix = self.settings.path_prefix();
        let mut body = String::new();
        let endpoint_html = escape(endpoint);
        let _ = write!(
            body,
            "<header><h1>{title}</h1><p>An unofficial, read-only mirror of the <a href=\"https://huggingface.co\">Hugging Face Hub</a>, run by {operator}. \
             Point an unmodified client at it and it answers what huggingface.co would: from the mirror's disks when a file is cached, \
             fetched once from huggingface.co (and checked against its hash) when it is not.</p>{about}\
             <nav><a href=\"{prefix}/status\">Status of the mirrors</a></nav></header>",
            title = escape(&site.title),
            operator = escape(&site.operator),
            about = site.about.as_deref().map(|about| format!("<p>{}</p>", escape(about))).unwrap_or_default(),
            prefix = escape(prefix),
        );
        let _ = write!(
            body,
            "<section><h2>What it mirrors</h2><ul><li>Public models and public datasets: files, repository information, file lists.</li>\
             <li>Spaces, private and gated repositories pass through to huggingface.co with your token and are never stored.</li>\
             <li>Nothing can be uploaded, changed or deleted here: writes get <code>405 ReadOnlyMirror</code>.</li></ul></section>"
        );
        let _ = write!(
            body,
            "<section><h2>How to use it</h2><p>Set the endpoint; every <code>huggingface_hub</code> version, the <code>hf</code> CLI, \
             <code>transformers</code> and <code>datasets</code> follow it:</p>\
             <pre><code>export HF_ENDPOINT={endpoint_html}\nhf download openai-community/gpt2 config.json</code></pre>\
             <p>In Python:</p><pre><code>import os\nos.environ[\"HF_ENDPOINT\"] = \"{endpoint_html}\"  # before importing huggingface_hub\n\
             from huggingface_hub import hf_hub_download\nhf_hub_download(\"openai-community/gpt2\", \"config.json\")</code></pre>\
             <p>With transformers:</p><pre><code>HF_ENDPOINT={endpoint_html} python -c 'from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(\"openai-community/gpt2\")'</code></pre></section>"
        );
        let _ = write!(
            body,
            "<section><h2>Behaviour</h2><ul>\
             <li><code>X-Cache</code> says where an answer came from: <code>HIT</code> (the mirror's disks), <code>REVALIDATED</code> \
             (checked with huggingface.co first), <code>MISS</code> (fetched now).</li>\
             <li>A file nobody asked for before is fetched once for the whole mirror while you download it; every byte is checked \
             against the file's hash before it is kept.</li>\
             <li><code>Range</code> requests, <code>If-None-Match</code> (304) and resumed downloads work on every file.</li>\
             <li>Branches and tags are re-checked with huggingface.co after a short time; commits never change.</li>\
             <li>Protocols: {protocols}.</li>\
             <li>No Xet: files come over plain HTTP, also for clients with <code>hf_xet</code> installed.</li></ul></section>",
            protocols = escape(&self.protocols().join(", ")),
        );
        body.push_str(&self.limits_html());
        if self.rsync {
            let host = site.rsync_name.clone().unwrap_or_else(|| host_of(endpoint).to_owned());
            let _ = write!(
                body,
                "<section><h2>Bulk downloads: rsync</h2><p>Whole repositories the mirror keeps are served read-only over rsync, \
                 from the mirror nearest to you:</p><pre><code>rsync -av rsync://{host}/models/\nrsync -av rsync://{host}/datasets/\n\
                 rsync -av rsync://{host}/indexes/   # Parquet lists of every file the mirror holds</code></pre></section>",
                host = escape(&host),
            );
        }
        body.push_str("<section><h2>Peer mirrors</h2><table id=\"peers\"><thead><tr><th scope=\"col\">Mirror</th><th scope=\"col\">City</th>\
             <th scope=\"col\">Operator</th><th scope=\"col\">Uplink</th><th scope=\"col\">Storage</th><th scope=\"col\">State</th></tr></thead><tbody>");
        for node in &site.nodes {
            let state = rows.iter().find(|row| row.name == node.name).map_or("dead", |row| row.state);
            let _ = write!(
                body,
                "<tr data-node=\"{name}\" data-state=\"{state}\"><th scope=\"row\">{name}</th><td>{city}</td><td>{operator}</td><td>{uplink}</td>\
                 <td>{storage}</td><td class=\"state-{state}\">{state}</td></tr>",
                name = escape(&node.name),
                city = escape(&place(node)),
                operator = escape(&node.operator),
                uplink = if node.bandwidth_gbps > 0 { format!("{} Gbit/s", node.bandwidth_gbps) } else { String::new() },
                storage = escape(&node.storage),
            );
        }
        body.push_str("</tbody></table></section>");
        let _ = write!(body, "<section><h2>Privacy</h2><p>{}</p></section>", escape(&site.privacy));
        let _ = write!(body, "<section><h2>Terms</h2><p>{}</p></section>", escape(&site.terms));
        if let Some(contact) = &site.contact {
            let _ = write!(body, "<section><h2>Contact</h2><p>{}</p></section>", contact_html(contact));
        }
        layout(&site.title, &body)
    }

    fn limits_html(&self) -> String {
        let quota = &self.limits.default;
        let mut items = Vec::new();
        if quota.requests_per_second > 0.0 {
            items.push(format!("{} requests per second per address (bursts of {})", quota.requests_per_second, quota.burst));
        }
        if quota.parallel > 0 {
            items.push(format!("{} requests at once per network", quota.parallel));
        }
        if quota.daily_bytes > 0 {
            items.push(format!("{} per network per day over HTTP; more goes through rsync", human_bytes(quota.daily_bytes)));
        }
        if self.limits.cold_fills_per_client > 0 {
            items.push(format!(
                "{} downloads at once of files the mirror does not hold yet, per network",
                self.limits.cold_fills_per_client
            ));
        }
        if items.is_empty() {
            return "<section><h2>Limits</h2><p>None configured.</p></section>".into();
        }
        let list: String = items.iter().map(|item| format!("<li>{}</li>", escape(item))).collect();
        format!(
            "<section><h2>Limits</h2><ul>{list}</ul><p>Beyond a limit the answer is <code>429</code> with <code>Retry-After</code> \
             and <code>RateLimit</code> fields; the Hub clients wait and retry by themselves.</p></section>"
        )
    }

    fn status_html(&self, rows: &[NodeRow], leader: Option<&str>, top: &[(String, u64)]) -> String {
        let prefix = self.settings.path_prefix();
        let mut body = format!(
            "<header><h1>Status of the mirrors</h1><nav><a href=\"{}/\">About {}</a></nav></header>",
            escape(prefix),
            escape(&self.config.title)
        );
        body.push_str("<section><h2>Mirrors</h2><table id=\"nodes\"><thead><tr><th scope=\"col\">Mirror</th><th scope=\"col\">State</th>\
             <th scope=\"col\">Stored</th><th scope=\"col\">Free disk</th><th scope=\"col\">Hit ratio</th><th scope=\"col\">Served from disk</th>\
             <th scope=\"col\">From peers</th><th scope=\"col\">From huggingface.co</th><th scope=\"col\">Version</th></tr></thead><tbody>");
        for row in rows {
            let figure = |pick: fn(&Figures) -> u64| row.figures.as_ref().map_or_else(String::new, |figures| human_bytes(pick(figures)));
            let _ = write!(
                body,
                "<tr data-node=\"{name}\" data-state=\"{state}\"><th scope=\"row\">{name}</th><td class=\"state-{state}\">{state}</td>\
                 <td>{stored}</td><td>{free}</td><td>{ratio}</td><td>{disk}</td><td>{peers}</td><td>{upstream}</td><td>{version}</td></tr>",
                name = escape(&row.name),
                state = row.state,
                stored = figure(|figures| figures.stored_bytes),
                free = row.free_disk.map(human_bytes).unwrap_or_default(),
                ratio = row.hit_ratio.map(|ratio| format!("{:.1} %", ratio * 100.0)).unwrap_or_default(),
                disk = figure(|figures| figures.served_from_disk),
                peers = figure(|figures| figures.fetched_from_peers),
                upstream = figure(|figures| figures.fetched_from_upstream),
                version = escape(row.version.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</tbody></table>");
        let totals = totals(rows);
        let _ = write!(
            body,
            "<p>Catalog leader: <strong id=\"catalog-leader\">{leader}</strong>. Served from the mirrors' disks: {saved}; \
             fetched from huggingface.co: {fetched} (since each node started).</p></section>",
            leader = escape(leader.unwrap_or(if self.operator.cluster.is_some() { "none (election)" } else { "this node (single node)" })),
            saved = human_bytes(totals.served_from_disk),
            fetched = human_bytes(totals.fetched_from_upstream),
        );
        let _ = write!(body, "<section><h2>Most requested repositories, last {TOP_DAYS} days</h2>");
        if top.is_empty() {
            body.push_str("<p>No complete day counted yet.</p>");
        } else {
            body.push_str(
                "<table id=\"top-repos\"><thead><tr><th scope=\"col\">Repository</th><th scope=\"col\">Requests</th></tr></thead><tbody>",
            );
            for (repo, requests) in top {
                let _ = write!(body, "<tr><td>{}</td><td>{requests}</td></tr>", escape(repo));
            }
            body.push_str("</tbody></table>");
        }
        body.push_str("<p>From this node's anonymous daily counts.</p></section>");
        layout(&format!("Status — {}", self.config.title), &body)
    }
}

/// The sums of every node's figures.
fn totals(rows: &[NodeRow]) -> Figures {
    let mut sum = Figures::default();
    for figures in rows.iter().filter_map(|row| row.figures.as_ref()) {
        sum.stored_bytes += figures.stored_bytes;
        sum.blobs += figures.blobs;
        sum.hits += figures.hits;
        sum.revalidated += figures.revalidated;
        sum.misses += figures.misses;
        sum.served_from_disk += figures.served_from_disk;
        sum.fetched_from_peers += figures.fetched_from_peers;
        sum.fetched_from_upstream += figures.fetched_from_upstream;
    }
    sum
}

/// JSON when the client asks for it and not for HTML (a browser's `Accept` names HTML first).
fn wants_json(parts: &Parts) -> bool {
    let accept = parts.headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

/// The headers every page carries: no script may run, nothing loads from elsewhere, no cookie.
fn page_response(method: &Method, content_type: &'static str, body: String) -> Response {
    let length = body.len();
    let mut response = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(body) });
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

fn html_page(method: &Method, html: &str) -> Response {
    page_response(method, "text/html; charset=utf-8", html.to_owned())
}

fn json_page(method: &Method, value: &Value) -> Response {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    page_response(method, "application/json; charset=utf-8", text)
}

/// The page around a body: semantic, readable on a phone, styled inline.
fn layout(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><main>{body}</main>\
         <footer><p>Served by hf-mirror {version}. No cookies, no scripts.</p></footer></body></html>\n",
        title = escape(title),
        version = env!("CARGO_PKG_VERSION"),
    )
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fff}\
main,footer{max-width:60rem;margin:0 auto;padding:0 1rem}h1{font-size:1.8rem}h2{font-size:1.3rem;margin-top:2rem}\
pre{background:#f4f4f4;padding:.75rem;overflow-x:auto}code{font-family:ui-monospace,monospace}\
table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}\
.state-live{color:#0a6b2d}.state-dead{color:#a3160b}.state-draining,.state-starting{color:#8a5a00}footer{color:#666;font-size:.9rem;margin-top:3rem}";

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

/// A contact as a link when it is an e-mail address or an https URL, else as text.
fn contact_html(contact: &str) -> String {
    let simple = |text: &str| !text.contains(char::is_whitespace) && !text.contains(['"', '<', '>']);
    if contact.starts_with("https://") && simple(contact) {
        format!("<a href=\"{0}\">{0}</a>", escape(contact))
    } else if contact.contains('@') && simple(contact) && !contact.contains(':') {
        format!("<a href=\"mailto:{0}\">{0}</a>", escape(contact))
    } else {
        escape(contact)
    }
}

fn place(node: &SiteNode) -> String {
    match (node.city.is_empty(), node.country.is_empty()) {
        (false, false) => format!("{}, {}", node.city, node.country),
        (false, true) => node.city.clone(),
        _ => node.country.clone(),
    }
}

/// The host of an origin (`https://host:port/x` → `host`; IPv6 without brackets).
fn host_of(origin: &str) -> &str {
    let after_scheme = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or(after_scheme);
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Bytes for people: `1.5 GB` (powers of 1000, as disks are sold).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_texts_are_escaped() {
        assert_eq!(escape("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(contact_html("ops@example.org"), "<a href=\"mailto:ops@example.org\">ops@example.org</a>");
        assert_eq!(contact_html("https://example.org/contact"), "<a href=\"https://example.org/contact\">https://example.org/contact</a>");
        assert_eq!(contact_html("javascript:alert(1)"), "javascript:alert(1)", "never a link");
        assert_eq!(contact_html("a@b\" onmouseover=\"x"), "a@b&quot; onmouseover=&quot;x");
    }

    #[test]
    fn hosts_and_sizes_for_people() {
        assert_eq!(host_of("https://mirror.example:8443/hf"), "mirror.example");
        assert_eq!(host_of("http://127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("https://[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(host_of("https://mirror.example"), "mirror.example");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
    }
}
