//! The Files service's verbs: `ls` and `read`, under `/etc` and `/var`.

use std::io::Write;

use crate::cli;
use crate::output::{self, Table};
use crate::session::{report, Session};

/// `keelctl ls PATH [-r]`.
pub async fn ls(session: &Session, arguments: &cli::LsArgs) -> anyhow::Result<bool> {
    let request = keelson_api::files::ListRequest {
        path: arguments.path.clone(),
        recursive: arguments.recursive,
    };
    let answers = session
        .each_files(|mut client| {
            let request = request.clone();
            async move { Ok(client.list(request).await?.into_inner()) }
        })
        .await;
    report(session.format, answers, |answers| {
        let mut table = Table::new(&["NODE", "MODE", "UID", "GID", "SIZE", "MODIFIED", "PATH"]);
        for (node, listing) in answers {
            for entry in &listing.entries {
                let path = if entry.link_target.is_empty() {
                    entry.path.clone()
                } else {
                    format!("{} -> {}", entry.path, entry.link_target)
                };
                table.row(vec![
                    node.clone(),
                    output::permissions(&entry.kind, entry.mode),
                    entry.uid.to_string(),
                    entry.gid.to_string(),
                    entry.size.to_string(),
                    modified(entry.modified),
                    path,
                ]);
            }
        }
        table.render()
    })
}

/// `keelctl read PATH`: the file's bytes on stdout.
pub async fn read(session: &Session, path: &str) -> anyhow::Result<bool> {
    let request = keelson_api::files::ReadRequest {
        path: path.to_owned(),
    };
    let answers = session
        .each_files(|mut client| {
            let request = request.clone();
            async move {
                let mut stream = client.read(request).await?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok(bytes)
            }
        })
        .await;
    let several = answers.len() > 1;
    let mut all_good = true;
    let mut stdout = std::io::stdout().lock();
    for (node, outcome) in answers {
        match outcome {
            Ok(bytes) => {
                if several {
                    writeln!(stdout, "==> {node}:{path} <==")?;
                }
                stdout.write_all(&bytes)?;
            }
            Err(error) => {
                all_good = false;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    Ok(all_good)
}

fn modified(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
}
