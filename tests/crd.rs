//! The CRD YAML checked in under `crds/` is what `tenantry crd` prints (regenerate with
//! `cargo run -- crd > crds/tenantry.yaml`).

#[test]
fn checked_in_crds_are_current() {
    let path =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("crds/tenantry.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("crds/tenantry.yaml exists");
    let generated = tenantry::crd::crd_yaml();
    assert!(
        checked_in == generated,
        "crds/tenantry.yaml is stale: run `cargo run -- crd > crds/tenantry.yaml`"
    );
}

#[test]
fn crd_subcommand_prints_the_same_yaml() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("crd")
        .output()
        .expect("run tenantry crd");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf8"),
        tenantry::crd::crd_yaml()
    );
}
