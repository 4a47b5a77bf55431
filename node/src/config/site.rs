//! `[site]` resolved: what the mirror's public pages (`/`, `/status`) say about who runs it, and
//! the peer directory they list, taken from the topology's nodes.

use super::file::{NodeEntry, SiteSection};

/// The texts of the public pages; every field has a default that says what the software is.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteConfig {
    /// The page title and heading (default: the DNS zone, else `hf-mirror`).
    pub title: String,
    /// Who runs the mirror.
    pub operator: String,
    /// How to reach them (an address, a URL); none by default.
    pub contact: Option<String>,
    /// A paragraph of the operator's own about the mirror.
    pub about: Option<String>,
    pub terms: String,
    pub privacy: String,
    /// The peer mirrors, in topology order.
    pub nodes: Vec<SiteNode>,
    /// The geo-routed rsync name (`rsync.ZONE`), when the nodes answer DNS and run rsync.
    pub rsync_name: Option<String>,
}

/// One peer mirror as the public pages list it.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteNode {
    pub name: String,
    pub city: String,
    pub country: String,
    pub operator: String,
    pub bandwidth_gbps: u32,
    pub storage: String,
}

const DEFAULT_OPERATOR: &str = "the operators of this hf-mirror installation";
const DEFAULT_TERMS: &str = "This is an unofficial, read-only mirror of public files of the Hugging Face Hub. \
Files are served as huggingface.co serves them, under the licences their authors chose; read each \
repository's licence before you use it. The service is offered as is, without any guarantee of \
availability, and may limit or refuse requests to keep it usable for everyone.";
const DEFAULT_PRIVACY: &str = "No cookies and no tracking. Each request is logged with the client \
address shortened to its network (IPv4 /24, IPv6 /48), never with a query string, token or cookie; \
those lines are kept 14 days and then reduced to anonymous daily counts per repository. Tokens for \
private, gated and Space repositories pass through to huggingface.co and are never stored.";

impl SiteConfig {
    /// The pages of a node without a topology: itself only, the defaults.
    pub fn standalone(node_name: &str) -> SiteConfig {
        SiteConfig {
            title: "hf-mirror".into(),
            operator: DEFAULT_OPERATOR.into(),
            contact: None,
            about: None,
            terms: DEFAULT_TERMS.into(),
            privacy: DEFAULT_PRIVACY.into(),
            nodes: vec![SiteNode {
                name: node_name.to_owned(),
                city: String::new(),
                country: String::new(),
                operator: String::new(),
                bandwidth_gbps: 0,
                storage: String::new(),
            }],
            rsync_name: None,
        }
    }

    /// From `[site]` and the topology's nodes; `rsync_name` when the zone has one.
    pub fn resolve(section: Option<&SiteSection>, zone: &str, nodes: &[NodeEntry], rsync_name: Option<String>) -> SiteConfig {
        let section = section.cloned().unwrap_or_default();
        let text = |value: Option<String>| value.map(|text| text.trim().to_owned()).filter(|text| !text.is_empty());
        SiteConfig {
            title: text(section.title).unwrap_or_else(|| zone.trim_end_matches('.').to_owned()),
            operator: text(section.operator).unwrap_or_else(|| DEFAULT_OPERATOR.into()),
            contact: text(section.contact),
            about: text(section.about),
            terms: text(section.terms).unwrap_or_else(|| DEFAULT_TERMS.into()),
            privacy: text(section.privacy).unwrap_or_else(|| DEFAULT_PRIVACY.into()),
            nodes: nodes
                .iter()
                .map(|node| SiteNode {
                    name: node.name.clone(),
                    city: node.city.clone(),
                    country: node.country.clone(),
                    operator: node.operator.clone(),
                    bandwidth_gbps: node.bandwidth_gbps,
                    storage: node.storage.clone(),
                })
                .collect(),
            rsync_name,
        }
    }
}
