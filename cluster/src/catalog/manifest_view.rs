//! Reading a commit's manifest without holding all of it: a manifest of at most
//! [`MANIFEST_PAGE_ENTRIES`] entries is stored and kept whole; a larger one is stored as pages of that
//! many entries in path order plus a head naming each page's first path, and is read one page at a
//! time. A lookup reads the one page its path is in; a listing reads the pages it walks, one at a
//! time, and steps over whole subtrees a non-recursive listing does not show. So a request for a
//! 100,000-file repository never holds more than a page of its manifest.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CatalogError, EntryKind, Manifest, ManifestEntry};

/// The entries of one stored manifest page; a manifest of at most this many is stored whole.
pub const MANIFEST_PAGE_ENTRIES: usize = 1024;

/// What the catalog keeps of a paged manifest besides its pages: enough to know which one page a
/// path can be in without reading any other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHead {
    /// Entries in all pages together.
    pub entries: u64,
    /// The first path of each page, in page order (so sorted).
    pub first_paths: Vec<String>,
}

impl ManifestHead {
    /// Splits a manifest into its head and its pages.
    pub fn paginate(manifest: &Manifest) -> (ManifestHead, Vec<Manifest>) {
        let pages: Vec<Manifest> = manifest.entries().chunks(MANIFEST_PAGE_ENTRIES).map(|chunk| Manifest::new(chunk.to_vec())).collect();
        let first_paths = pages.iter().map(|page| page.entries()[0].path.clone()).collect();
        (ManifestHead { entries: manifest.entries().len() as u64, first_paths }, pages)
    }

    /// The memory the head takes, roughly (for the catalog's cache budget).
    pub fn bytes(&self) -> usize {
        self.first_paths.iter().map(|path| path.len() + std::mem::size_of::<String>()).sum::<usize>() + 64
    }
}

/// Where the pages of a paged manifest come from (the catalog's storage, through its cache).
#[async_trait::async_trait]
pub trait ManifestPages: Send + Sync {
    async fn page(&self, index: usize) -> Result<Arc<Manifest>, CatalogError>;
}

/// A commit's manifest as the catalog hands it out: whole, or a head and a way to read its pages.
/// Cheap to clone.
#[derive(Clone)]
pub enum ManifestView {
    Whole(Arc<Manifest>),
    Paged { head: Arc<ManifestHead>, pages: Arc<dyn ManifestPages> },
}

impl std::fmt::Debug for ManifestView {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestView::Whole(manifest) => write!(formatter, "ManifestView::Whole({} entries)", manifest.entries().len()),
            ManifestView::Paged { head, .. } => {
                write!(formatter, "ManifestView::Paged({} entries in {} pages)", head.entries, head.first_paths.len())
            }
        }
    }
}

/// Where a listing starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListStart {
    /// At the first entry.
    First,
    /// After this path (the last one a previous page showed).
    After(String),
    /// After this many entries (the cursor of older releases: an offset into the listing).
    Skip(usize),
}

/// An entry found by [`ManifestView::find`], with the page that holds it.
pub struct FoundEntry {
    page: Arc<Manifest>,
    position: usize,
}

impl std::ops::Deref for FoundEntry {
    type Target = ManifestEntry;

    fn deref(&self) -> &ManifestEntry {
        &self.page.entries()[self.position]
    }
}

impl ManifestView {
    /// Entries (files and directories) in the whole manifest.
    pub fn len(&self) -> u64 {
        match self {
            ManifestView::Whole(manifest) => manifest.entries().len() as u64,
            ManifestView::Paged { head, .. } => head.entries,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pages to read for every entry (one for a whole manifest).
    pub fn page_count(&self) -> usize {
        match self {
            ManifestView::Whole(_) => 1,
            ManifestView::Paged { head, .. } => head.first_paths.len(),
        }
    }

    /// Page `index` (the manifest itself when whole): walking `0..page_count()` visits every entry in
    /// path order with one page in memory at a time.
    pub async fn page(&self, index: usize) -> Result<Arc<Manifest>, CatalogError> {
        match self {
            ManifestView::Whole(manifest) => Ok(manifest.clone()),
            ManifestView::Paged { pages, .. } => pages.page(index).await,
        }
    }

    /// The page that would hold the first entry not `before` a key (and every page after it can only
    /// hold later entries).
    fn page_index(&self, before: impl Fn(&str) -> bool) -> usize {
        match self {
            ManifestView::Whole(_) => 0,
            ManifestView::Paged { head, .. } => head.first_paths.partition_point(|first| before(first)).saturating_sub(1),
        }
    }

    /// The entry at exactly this path.
    pub async fn find(&self, path: &str) -> Result<Option<FoundEntry>, CatalogError> {
        if self.is_empty() {
            return Ok(None);
        }
        let page = self.page(self.page_index(|first| first <= path)).await?;
        Ok(page.position_of(path).map(|position| FoundEntry { page, position }))
    }

    /// Every entry in one manifest (for a peer that asked for it, and for tests): the whole manifest
    /// in memory, so never on a client's request path.
    pub async fn to_whole(&self) -> Result<Arc<Manifest>, CatalogError> {
        match self {
            ManifestView::Whole(manifest) => Ok(manifest.clone()),
            ManifestView::Paged { head, .. } => {
                let mut entries = Vec::with_capacity(usize::try_from(head.entries).unwrap_or(0));
                for index in 0..self.page_count() {
                    entries.extend_from_slice(self.page(index).await?.entries());
                }
                Ok(Arc::new(Manifest::new(entries)))
            }
        }
    }

    /// Lists up to `limit` entries below `directory` (everything for the empty path) from `start`:
    /// every descendant when `recursive`, else the direct children only, in path order, handing each
    /// to `visit`. Returns whether more entries follow, or `None` when the directory does not exist.
    pub async fn list(
        &self,
        directory: &str,
        recursive: bool,
        start: &ListStart,
        limit: usize,
        mut visit: impl FnMut(&ManifestEntry) + Send,
    ) -> Result<Option<bool>, CatalogError> {
        if !directory.is_empty() {
            match self.find(directory).await? {
                Some(entry) if entry.kind == EntryKind::Directory => {}
                _ => return Ok(None),
            }
        }
        let prefix = if directory.is_empty() { String::new() } else { format!("{directory}/") };
        let mut reader = Reader { view: self, index: 0, page: None, position: 0 };
        let mut to_skip = 0;
        match start {
            ListStart::After(path) if path.as_str() >= prefix.as_str() => reader.seek(path, true).await?,
            ListStart::Skip(count) => {
                to_skip = *count;
                reader.seek(&prefix, false).await?;
            }
            ListStart::First | ListStart::After(_) => reader.seek(&prefix, false).await?,
        }
        let mut shown = 0;
        loop {
            let Some(entry) = reader.current().await? else { return Ok(Some(false)) };
            let Some(rest) = entry.path.strip_prefix(prefix.as_str()) else { return Ok(Some(false)) };
            if !recursive && let Some(slash) = rest.find('/') {
                // Below a child: its whole subtree sorts before `child0` ('0' follows '/'), and is stepped
                // over in one seek rather than read.
                let past_subtree = format!("{prefix}{}0", &rest[..slash]);
                reader.seek(&past_subtree, false).await?;
                continue;
            }
            if to_skip > 0 {
                to_skip -= 1;
            } else if shown == limit {
                return Ok(Some(true));
            } else {
                visit(entry);
                shown += 1;
            }
            reader.position += 1;
        }
    }
}

/// A position in a manifest's entries, holding the one page it is on.
struct Reader<'a> {
    view: &'a ManifestView,
    index: usize,
    page: Option<Arc<Manifest>>,
    position: usize,
}

impl Reader<'_> {
    /// Moves to the first entry whose path is not before `key` (not at or before it, when `after`).
    async fn seek(&mut self, key: &str, after: bool) -> Result<(), CatalogError> {
        let before = |path: &str| if after { path <= key } else { path < key };
        let index = self.view.page_index(before);
        if self.page.is_none() || index != self.index {
            self.page = Some(self.view.page(index).await?);
            self.index = index;
        }
        let page = self.page.as_ref().expect("a page was just read");
        self.position = page.entries().partition_point(|entry| before(&entry.path));
        Ok(())
    }

    /// The entry at the position, reading the next page when the position passed the end of this
    /// one; `None` after the last entry.
    async fn current(&mut self) -> Result<Option<&ManifestEntry>, CatalogError> {
        loop {
            let page = self.page.as_ref().expect("a listing seeks before it reads");
            if self.position < page.entries().len() {
                break;
            }
            if self.index + 1 >= self.view.page_count() {
                return Ok(None);
            }
            self.index += 1;
            self.page = Some(self.view.page(self.index).await?);
            self.position = 0;
        }
        Ok(self.page.as_ref().map(|page| &page.entries()[self.position]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Pages held in memory, counting the reads.
    struct MemoryPages {
        pages: Vec<Arc<Manifest>>,
        reads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ManifestPages for MemoryPages {
        async fn page(&self, index: usize) -> Result<Arc<Manifest>, CatalogError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.pages.get(index).cloned().ok_or_else(|| CatalogError::Storage(format!("no page {index}")))
        }
    }

    fn entry(path: &str, kind: EntryKind) -> ManifestEntry {
        ManifestEntry { path: path.into(), kind, size: path.len() as u64, oid: format!("{:040x}", path.len()), lfs: None }
    }

    /// A repo with nested directories, files beside them, names that sort around '/' ("a-b", "a0"),
    /// and one directory with many files: every case the subtree skipping must get right.
    fn sample() -> Manifest {
        let mut entries = Vec::new();
        for directory in ["a", "a/b", "a/b/c", "data", "z"] {
            entries.push(entry(directory, EntryKind::Directory));
        }
        for file in ["README.md", "a-b.txt", "a0.txt", "a/x.txt", "a/b/y.txt", "a/b/c/z.txt", "z/last.bin", "zz.bin"] {
            entries.push(entry(file, EntryKind::File));
        }
        for index in 0..40 {
            entries.push(entry(&format!("data/shard-{index:03}.parquet"), EntryKind::File));
        }
        Manifest::new(entries)
    }

    /// The same manifest whole and in pages of `page_entries`.
    fn views(manifest: &Manifest, page_entries: usize) -> (ManifestView, ManifestView, Arc<MemoryPages>) {
        let pages: Vec<Arc<Manifest>> =
            manifest.entries().chunks(page_entries).map(|chunk| Arc::new(Manifest::new(chunk.to_vec()))).collect();
        let head = ManifestHead {
            entries: manifest.entries().len() as u64,
            first_paths: pages.iter().map(|page| page.entries()[0].path.clone()).collect(),
        };
        let source = Arc::new(MemoryPages { pages, reads: AtomicUsize::new(0) });
        let paged = ManifestView::Paged { head: Arc::new(head), pages: source.clone() };
        (ManifestView::Whole(Arc::new(manifest.clone())), paged, source)
    }

    async fn listed(view: &ManifestView, directory: &str, recursive: bool, start: ListStart, limit: usize) -> Option<(Vec<String>, bool)> {
        let mut paths = Vec::new();
        let more = view.list(directory, recursive, &start, limit, |entry| paths.push(entry.path.clone())).await.unwrap()?;
        Some((paths, more))
    }

    /// The listing the plain definition gives: filter every entry.
    fn expected(manifest: &Manifest, directory: &str, recursive: bool) -> Vec<String> {
        let prefix = if directory.is_empty() { String::new() } else { format!("{directory}/") };
        manifest
            .entries()
            .iter()
            .filter_map(|entry| entry.path.strip_prefix(prefix.as_str()).map(|rest| (entry, rest)))
            .filter(|(_, rest)| recursive || !rest.contains('/'))
            .map(|(entry, _)| entry.path.clone())
            .collect()
    }

    #[tokio::test]
    async fn paged_and_whole_list_the_same_entries_page_by_page() {
        let manifest = sample();
        for page_entries in [1, 2, 3, 7, 1024] {
            let (whole, paged, _) = views(&manifest, page_entries);
            for directory in ["", "a", "a/b", "a/b/c", "data", "z"] {
                for recursive in [false, true] {
                    let want = expected(&manifest, directory, recursive);
                    for view in [&whole, &paged] {
                        // Every page size of the listing, walked by its last path, adds up to the listing.
                        for limit in [1, 3, 1000] {
                            let (mut got, mut start) = (Vec::new(), ListStart::First);
                            loop {
                                let (page, more) = listed(view, directory, recursive, start, limit).await.unwrap();
                                assert!(page.len() <= limit);
                                got.extend(page.iter().cloned());
                                if !more {
                                    break;
                                }
                                start = ListStart::After(page.last().unwrap().clone());
                            }
                            assert_eq!(got, want, "{view:?} {directory:?} recursive={recursive} limit={limit} pages of {page_entries}");
                            let (skipped, _) = listed(view, directory, recursive, ListStart::Skip(2), 1000).await.unwrap();
                            assert_eq!(skipped, want.iter().skip(2).cloned().collect::<Vec<_>>());
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn missing_directories_files_and_odd_cursors() {
        let manifest = sample();
        let (whole, paged, _) = views(&manifest, 3);
        for view in [&whole, &paged] {
            assert!(listed(view, "nope", false, ListStart::First, 10).await.is_none());
            assert!(listed(view, "README.md", false, ListStart::First, 10).await.is_none(), "a file is not a directory");
            assert!(listed(view, "a/b/c/z.txt", true, ListStart::First, 10).await.is_none());
            // A cursor before the directory starts at its first entry; one past its end lists nothing.
            let (from_before, _) = listed(view, "z", false, ListStart::After("a".into()), 10).await.unwrap();
            assert_eq!(from_before, ["z/last.bin"]);
            assert_eq!(listed(view, "z", false, ListStart::After("zzz".into()), 10).await.unwrap(), (vec![], false));
            assert_eq!(listed(view, "", true, ListStart::Skip(usize::MAX), 10).await.unwrap(), (vec![], false));
            for present in manifest.entries() {
                assert_eq!(view.find(&present.path).await.unwrap().as_deref(), Some(present));
            }
            for absent in ["", "a/", "A", "a/b/c/z", "zzz", "\u{10FFFF}"] {
                assert!(view.find(absent).await.unwrap().is_none(), "{absent:?}");
            }
        }
        assert_eq!(paged.to_whole().await.unwrap().as_ref(), &manifest);
    }

    #[tokio::test]
    async fn a_lookup_reads_one_page_and_a_shallow_listing_steps_over_subtrees() {
        let mut entries = vec![entry("data", EntryKind::Directory), entry("README.md", EntryKind::File)];
        entries.extend((0..10_000).map(|index| entry(&format!("data/{index:05}.bin"), EntryKind::File)));
        let manifest = Manifest::new(entries);
        let (_, paged, source) = views(&manifest, 100);
        assert!(paged.find("data/05000.bin").await.unwrap().is_some());
        assert_eq!(source.reads.swap(0, Ordering::Relaxed), 1);
        let (root, more) = listed(&paged, "", false, ListStart::First, 1000).await.unwrap();
        assert_eq!((root, more), (vec!["README.md".to_owned(), "data".to_owned()], false));
        assert!(source.reads.load(Ordering::Relaxed) <= 3, "the root listing read {} of 101 pages", source.reads.load(Ordering::Relaxed));
    }
}
