//! Tells the scenarios whether they are built by root. The partition scenario cuts links between
//! network namespaces and the disk-full one mounts a tmpfs, which only root can do: built by anyone
//! else they are compiled as ignored with that reason, so `cargo test` reports them instead of
//! passing without having run; built by root (as CI runs) they run, and fail with the reason when
//! they cannot.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hfm_root)");
    println!("cargo::rerun-if-changed=build.rs");
    // `sudo` and `su` set these, so a build by another user runs this again.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_UID");
    // "Uid:\treal\teffective\tsaved\tfs"
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    if effective_uid == Some("0") {
        println!("cargo::rustc-cfg=hfm_root");
    }
}
