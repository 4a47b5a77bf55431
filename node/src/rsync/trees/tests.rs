use std::os::unix::fs::MetadataExt;

use super::*;
use crate::rsync::daemon::testing::{rsync, start_daemon};

#[test]
fn hostile_paths_are_refused() {
    assert_eq!(safe_components("config.json").unwrap(), ["config.json"]);
    assert_eq!(safe_components("a/b/.c").unwrap(), ["a", "b", ".c"]);
    for hostile in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", ".", "..", "a\0b", &"x".repeat(256), &"a/".repeat(3000)]
    {
        assert!(safe_components(hostile).is_none(), "{hostile:?}");
    }
}

#[test]
fn blob_times_depend_on_the_etag_only() {
    let etag = "0123456789abcdef".repeat(4);
    assert_eq!(blob_time(&etag), blob_time(&etag));
    assert_ne!(blob_time(&etag), blob_time(&"f".repeat(64)));
    assert!(blob_time(&"f".repeat(64)) < UNIX_EPOCH + Duration::from_secs(1_300_000_000));
}

/// Writes a blob file and returns (path, etag-like name).
fn blob(directory: &Path, name: &str, bytes: &[u8]) -> (PathBuf, String) {
    let etag = format!("{:0>64}", hex::encode(name));
    let path = directory.join(&etag);
    std::fs::write(&path, bytes).unwrap();
    (path, etag)
}

fn tree(repo: &str, commit: &str, files: Vec<(&str, (PathBuf, String))>) -> RepoTree {
    RepoTree {
        repo: RepoKey::new(RepoType::Model, repo),
        revision: "main".into(),
        commit: commit.into(),
        switched_at_ms: 1_700_000_000_000,
        files: files.into_iter().map(|(path, (blob, etag))| (path.to_owned(), blob, etag)).collect(),
    }
}

#[test]
fn a_generation_is_hard_links_with_stable_times_and_a_trace() {
    let directory = tempfile::tempdir().unwrap();
    let blobs = directory.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let config = blob(&blobs, "config", b"{}");
    let weights = blob(&blobs, "weights", &[7u8; 4096]);
    let trees = vec![
        tree("org/model", &"c".repeat(40), vec![("config.json", config.clone()), ("sub/dir/weights.bin", weights.clone())]),
        tree("org/escape", &"d".repeat(40), vec![("../../outside", config.clone())]),
        tree("org/clash", &"e".repeat(40), vec![("a", config.clone()), ("a/b", weights.clone())]),
        tree("org/trace", &"f".repeat(40), vec![(TRACE_FILE, config.clone())]),
        tree("not-org-name", &"f".repeat(40), vec![("x", config.clone())]),
    ];
    let target = directory.path().join("gen/models/1");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let (built, failed) = build_generation(&target, &trees, "fra1").unwrap();
    assert_eq!(built, [RepoKey::new(RepoType::Model, "org/model")]);
    let failed: Vec<&str> = failed.iter().map(|(repo, _)| repo.repo_id.as_str()).collect();
    assert_eq!(failed, ["org/escape", "org/clash", "org/trace", "not-org-name"]);
    assert!(!directory.path().join("outside").exists() && !target.join("org/escape").exists() && !target.join("org/clash").exists());

    let linked = target.join("org/model/sub/dir/weights.bin");
    assert_eq!(std::fs::read(&linked).unwrap(), [7u8; 4096]);
    let (blob_meta, link_meta) = (std::fs::metadata(&weights.0).unwrap(), std::fs::metadata(&linked).unwrap());
    assert_eq!(blob_meta.ino(), link_meta.ino(), "a hard link, not a copy");
    assert_eq!(link_meta.modified().unwrap(), blob_time(&weights.1));
    assert_eq!(
        std::fs::metadata(target.join("org/model/sub")).unwrap().modified().unwrap(),
        UNIX_EPOCH + Duration::from_secs(DIRECTORY_TIME)
    );
    let trace = std::fs::read_to_string(target.join("org/model").join(TRACE_FILE)).unwrap();
    assert!(trace.contains(&format!("commit: {}\n", "c".repeat(40))), "{trace}");
    assert!(trace.contains("switched: 2023-11-14T22:13:20Z\n") && trace.contains("node: fra1\n"), "{trace}");
    assert!(!directory.path().join("gen/models/.building-1").exists(), "the staging directory was renamed into place");
}

/// The contract of a tree switch: a pull that started before it finishes with the old tree, whole;
/// the next pull gets the new one; the old generation is in use until the pull ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_running_during_a_switch_sees_only_the_old_tree() {
    let directory = tempfile::tempdir().unwrap();
    let blobs = directory.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let paths = ["a.bin", "b.bin", "c.bin"];
    let old: Vec<(&str, (PathBuf, String))> =
        paths.iter().map(|path| (*path, blob(&blobs, &format!("old-{path}"), &[b'o'; 256 * 1024]))).collect();
    let new: Vec<(&str, (PathBuf, String))> =
        paths.iter().map(|path| (*path, blob(&blobs, &format!("new-{path}"), &[b'n'; 256 * 1024]))).collect();
    let root = directory.path().join("rsync");
    let first = generation_dir(&root, "models", 1);
    let second = generation_dir(&root, "models", 2);
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    build_generation(&first, &[tree("org/model", &"1".repeat(40), old)], "fra1").unwrap();

    let (rsyncd, task, shutdown, port) = start_daemon(directory.path(), &first).await;
    let url = format!("rsync://127.0.0.1:{port}/models/org/model/");

    // A slow pull (768 KiB at 128 KiB/s) is running when the tree switches.
    let during = directory.path().join("during");
    let mut pull =
        tokio::process::Command::new("rsync").args(["-a", "--bwlimit=128", &url, &during.display().to_string()]).spawn().unwrap();
    for _ in 0..100 {
        if in_use(&first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(in_use(&first), "the daemon's connection works inside the first generation");
    build_generation(&second, &[tree("org/model", &"2".repeat(40), new)], "fra1").unwrap();
    rsyncd.switch_module("models", &second).unwrap();
    assert!(in_use(&first), "the running pull still works in the old generation");
    assert!(pull.wait().await.unwrap().success());
    for path in paths {
        assert_eq!(std::fs::read(during.join(path)).unwrap(), [b'o'; 256 * 1024], "{path} is from the old tree");
    }
    assert!(std::fs::read_to_string(during.join(TRACE_FILE)).unwrap().contains(&"1".repeat(40)));

    // The next pull gets the new tree; one more transfers nothing.
    let after = directory.path().join("after");
    assert!(rsync(&["-a", &url, &after.display().to_string()]).status.success());
    for path in paths {
        assert_eq!(std::fs::read(after.join(path)).unwrap(), [b'n'; 256 * 1024], "{path} is from the new tree");
    }
    let again = rsync(&["-a", "--stats", &url, &after.display().to_string()]);
    let stats = String::from_utf8_lossy(&again.stdout);
    assert!(stats.contains("Number of regular files transferred: 0"), "{stats}");
    for _ in 0..100 {
        if !in_use(&first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!in_use(&first), "nothing works in the retired generation once the pull ended");
    shutdown.cancel();
    task.await.unwrap();
}
