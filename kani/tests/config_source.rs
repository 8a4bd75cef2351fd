//! The choice of configuration source (`keelson_config::acquire::choose`).

use keelson_config::acquire::{choose, Probe, SourceKind};

/// Instance ids drawn from a small set, so that equal and different ids both occur.
fn instance(id: Option<u8>) -> Option<String> {
    id.map(|id| format!("i-{}", id % 3))
}

/// A saved copy is kept unless a re-apply is asked for or a seed names another instance;
/// otherwise the first source in the order fw_cfg, NoCloud, URL wins; and the choice is
/// always a source that was found.
fn check(probe: &Probe) {
    let chosen = choose(probe);
    let found = match chosen {
        SourceKind::Saved => probe.saved.is_some(),
        SourceKind::FwCfg => probe.fw_cfg,
        SourceKind::NoCloud => probe.nocloud.is_some(),
        SourceKind::Url => probe.url,
        SourceKind::None => true,
        SourceKind::Api => false,
    };
    assert!(found, "{chosen:?} chosen but not found in {probe:?}");
    let new_instance = matches!(
        (&probe.saved, &probe.nocloud),
        (Some(saved), Some(Some(seed))) if saved.as_ref() != Some(seed)
    );
    if probe.saved.is_some() && !probe.reapply {
        let expected = if new_instance {
            SourceKind::NoCloud
        } else {
            SourceKind::Saved
        };
        assert_eq!(chosen, expected, "{probe:?}");
    } else {
        let expected = if probe.fw_cfg {
            SourceKind::FwCfg
        } else if probe.nocloud.is_some() {
            SourceKind::NoCloud
        } else if probe.url {
            SourceKind::Url
        } else {
            SourceKind::None
        };
        assert_eq!(chosen, expected, "{probe:?}");
    }
}

/// The rule holds for sampled (bolero) or all (Kani) probes.
#[test]
#[cfg_attr(kani, kani::proof)]
fn the_source_is_found_and_follows_the_order() {
    bolero::check!()
        .with_type::<(Option<Option<u8>>, bool, bool, Option<Option<u8>>, bool)>()
        .for_each(|&(saved, reapply, fw_cfg, nocloud, url)| {
            check(&Probe {
                saved: saved.map(instance),
                reapply,
                fw_cfg,
                nocloud: nocloud.map(instance),
                url,
            });
        });
}

/// The same rule over every combination of a small domain, without sampling:
/// 4 saved states x 2 x 2 x 4 seed states x 2 = 128 probes.
#[test]
fn the_source_rule_holds_for_every_small_probe() {
    let instances = [None, Some(None), Some(Some(0u8)), Some(Some(1u8))];
    for saved in instances {
        for reapply in [false, true] {
            for fw_cfg in [false, true] {
                for nocloud in instances {
                    for url in [false, true] {
                        check(&Probe {
                            saved: saved.map(instance),
                            reapply,
                            fw_cfg,
                            nocloud: nocloud.map(instance),
                            url,
                        });
                    }
                }
            }
        }
    }
}
