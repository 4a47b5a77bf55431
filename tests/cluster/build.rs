//! Tells the scenarios whether they are built by root. The partition scenario cuts links between
//! network namespaces, which only root can make: built by anyone else it is compiled as ignored with
//! that reason, so `cargo test` reports it instead of passing without having run; built by root (as
//! CI runs) it runs, and fails with the reason when the namespaces cannot be made.

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
