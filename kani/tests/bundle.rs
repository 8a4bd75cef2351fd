//! The update bundle's manifest parser and header reader (`keelson_update::bundle`) take
//! bytes from the network, so no input may make them panic, and whatever they accept must
//! be a manifest the engine can rely on.

use keelson_update::bundle::{ArtifactKind, BundleReader, Manifest};
use keelson_update::keys::{SigningKey, TrustRoot};

/// Any bytes either parse into a manifest that validates and serialises back to itself, or
/// are refused with an error; never a panic.
#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(64))]
fn manifest_parsing_accepts_only_valid_manifests() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(manifest) = Manifest::parse(bytes) {
            manifest.validate().unwrap();
            let names: Vec<ArtifactKind> = manifest
                .artifacts
                .iter()
                .map(|artifact| artifact.name)
                .collect();
            assert_eq!(names, ArtifactKind::ORDER);
            let again = serde_json::to_vec(&manifest).unwrap();
            assert_eq!(Manifest::parse(&again).unwrap(), manifest);
        }
    });
}

/// Any bytes given to the header reader are refused cleanly unless they carry a signature
/// from the trusted key. (Bolero only: the signature check runs ring's assembly, which Kani
/// does not model.)
#[test]
fn the_header_reader_never_panics_on_arbitrary_streams() {
    let (key, _) = SigningKey::generate().unwrap();
    let trust = TrustRoot::new(vec![key.public()]);
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = BundleReader::open(bytes, &trust);
        // The same bytes behind a valid magic and the trusted key id reach the signature.
        let mut framed = b"KEELBND\x01".to_vec();
        framed.extend_from_slice(&key.public().id().0);
        framed.extend_from_slice(bytes);
        assert!(BundleReader::open(&framed[..], &trust).is_err());
    });
}
