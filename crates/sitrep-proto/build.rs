//! Compiles `proto/sitrep/v1/*.proto` with protox (pure Rust): no system `protoc`.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "sitrep/v1/envelope.proto",
    "sitrep/v1/report.proto",
    "sitrep/v1/control.proto",
    "sitrep/v1/frame.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    // JSON mapping for the HTTP API: the proto's field names and enum spellings.
    let descriptors = prost::Message::encode_to_vec(&fds);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .build(&[".sitrep"])?;
    prost_build::Config::new()
        // Round-trip property tests derive arbitrary values for every message.
        .type_attribute(".", "#[cfg_attr(test, derive(::proptest_derive::Arbitrary))]")
        .compile_fds(fds)?;
    Ok(())
}
