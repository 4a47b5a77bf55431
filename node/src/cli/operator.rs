//! The CLI's side of the operator port: requests to a node's `/_hfm/` routes with the operator token.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// A node's operator port, and the token it wants.
pub struct OperatorClient {
    client: reqwest::Client,
    token: String,
}

impl OperatorClient {
    /// Reads the token from `token_file`; requests time out after `timeout`.
    pub fn new(token_file: &Path, timeout: Duration) -> anyhow::Result<OperatorClient> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the operator token {} (see --token-file)", token_file.display()))?
            .trim()
            .to_owned();
        Ok(OperatorClient { client: reqwest::Client::builder().timeout(timeout).build()?, token })
    }

    /// Sends `method path` to the operator port at `base` and reads the JSON answer.
    pub async fn call(&self, method: reqwest::Method, base: &str, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let response = self
            .client
            .request(method, &url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("asking {base} (is it the node's operator port, --operator-listen?)"))?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{base} answered {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn get(&self, base: &str, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, base, path).await
    }
}
