//! Snapshot of every CRD: the committed `crds/*.yaml` must be exactly what the Rust
//! types generate, so a change to a type that alters the schema users see shows up in
//! review as a diff of `crds/` (regenerate with `make generate`).

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let tmp = tempfile::tempdir().expect("tempdir");
    capstan::crds::write(Some(tmp.path())).expect("generate");
    let mut stale = Vec::new();
    for (stem, _) in capstan::crds::all() {
        let fresh =
            std::fs::read_to_string(tmp.path().join(format!("{stem}.yaml"))).expect("fresh");
        let committed =
            std::fs::read_to_string(dir.join(format!("{stem}.yaml"))).unwrap_or_default();
        if fresh != committed {
            stale.push(stem);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/ is stale for {stale:?}: run `make generate` and commit"
    );
}

#[test]
fn every_crd_is_in_the_capstan_group_with_a_status_subresource() {
    for (stem, crd) in capstan::crds::all() {
        assert_eq!(crd.spec.group, "capstan.dev", "{stem}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1", "{stem}");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{stem} has no status subresource"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{stem} has no short name"
        );
    }
}
