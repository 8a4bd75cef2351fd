//! Arbitrary bytes into every parser: each returns a config or an error, never panics.

use keelson_config::{load, load_nocloud, NoCloudSeed, Rejected};

/// A rejection must carry at least one error: "rejected for no reason" is a bug.
fn holds_an_error<T>(outcome: Result<T, Rejected>) {
    if let Err(rejected) = outcome {
        assert!(rejected.errors().count() > 0, "rejected without an error");
    }
}

#[test]
fn any_user_data_gives_a_config_or_errors() {
    bolero::check!().with_type::<Vec<u8>>().for_each(|bytes| {
        holds_an_error(load("fuzz", bytes));
    });
}

#[test]
fn any_json_after_an_ignition_header_gives_a_config_or_errors() {
    bolero::check!().with_type::<String>().for_each(|tail| {
        let text = format!("{{\"ignition\": {{\"version\": \"3.4.0\"}}, {tail}");
        holds_an_error(load("fuzz", text.as_bytes()));
    });
}

#[test]
fn any_cloud_config_gives_a_config_or_errors() {
    bolero::check!().with_type::<String>().for_each(|tail| {
        let text = format!("#cloud-config\n{tail}");
        holds_an_error(load("fuzz", text.as_bytes()));
    });
}

#[test]
fn any_native_config_gives_a_config_or_errors() {
    bolero::check!().with_type::<String>().for_each(|tail| {
        let text = format!("apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n{tail}");
        holds_an_error(load("fuzz", text.as_bytes()));
    });
}

#[test]
fn any_seed_gives_a_config_or_errors() {
    bolero::check!()
        .with_type::<(Vec<u8>, Vec<u8>, Vec<u8>)>()
        .for_each(|(meta, user, network)| {
            let seed = NoCloudSeed {
                meta_data: Some(meta),
                user_data: Some(user),
                network_config: Some(network),
            };
            holds_an_error(load_nocloud(&seed));
        });
}
