//! `X-Cache`: what an answer cost upstream.

/// What an answer cost upstream; the `X-Cache` header. Ordered so that `max` combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheStatus {
    /// Nothing was asked of upstream.
    Hit,
    /// A stale ref or policy was re-checked upstream; the data came from the cluster.
    Revalidated,
    /// Upstream served data for this answer.
    Miss,
}

impl CacheStatus {
    /// Reads an `X-Cache` value back.
    pub fn parse(text: &str) -> Option<CacheStatus> {
        [CacheStatus::Hit, CacheStatus::Revalidated, CacheStatus::Miss].into_iter().find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Miss => "MISS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CacheStatus;

    #[test]
    fn cache_statuses_combine_to_the_most_upstream_work() {
        assert_eq!(CacheStatus::Hit.max(CacheStatus::Revalidated), CacheStatus::Revalidated);
        assert_eq!(CacheStatus::Revalidated.max(CacheStatus::Miss), CacheStatus::Miss);
        assert_eq!(CacheStatus::Hit.max(CacheStatus::Hit).as_str(), "HIT");
        assert_eq!(CacheStatus::parse("REVALIDATED"), Some(CacheStatus::Revalidated));
        assert_eq!(CacheStatus::parse("hit"), None);
    }
}
