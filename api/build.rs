//! Compiles the protobuf definitions with protox (a Rust protobuf compiler), so that no
//! system `protoc` is needed, and keeps the descriptor set so that the role table can be
//! checked against every method the API declares.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/keelson/machine/v1/machine.proto",
        "proto/keelson/files/v1/files.proto",
        "proto/keelson/update/v1/update.proto",
        "proto/keelson/images/v1/images.proto",
        "proto/keelson/pods/v1/pods.proto",
        "proto/keelson/cluster/v1/cluster.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("keelson_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Serialize lets keelctl print any response as JSON or YAML with protobuf's field names.
    tonic_prost_build::configure()
        .type_attribute(".keelson", "#[derive(serde::Serialize)]")
        // `cluster status -o json` promises Kubernetes-style names (commitIndex).
        .type_attribute(
            ".keelson.cluster.v1.StatusResponse",
            "#[serde(rename_all = \"camelCase\")]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
