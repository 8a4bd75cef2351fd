//! Printing results: aligned tables for people, JSON or YAML for programs.

use serde::Serialize;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Aligned columns, more of them (pods: IP and NODE), as kubectl's `-o wide`.
    Wide,
    /// A JSON array of `{node, …}` (streams: one object per line).
    Json,
    /// YAML (streams: one document per entry).
    Yaml,
}

impl Format {
    /// True for the formats people read (`table`, `wide`).
    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }
}

/// Rows under a header, printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| header.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns two spaces apart.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(index) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut text = String::new();
            for (index, cell) in cells.iter().enumerate() {
                let last = index + 1 == cells.len();
                if last {
                    text.push_str(cell);
                } else {
                    let width = widths.get(index).copied().unwrap_or(0);
                    text.push_str(&format!("{cell:<width$}  "));
                }
            }
            text.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// One node's answer, as printed in JSON and YAML.
#[derive(Debug, Serialize)]
pub struct Labelled<'a, T: Serialize> {
    /// The node address.
    pub node: &'a str,
    /// Its answer.
    #[serde(flatten)]
    pub value: &'a T,
}

/// Prints answers in a machine format.
pub fn print_structured<T: Serialize>(
    format: Format,
    answers: &[(String, T)],
) -> anyhow::Result<()> {
    let labelled: Vec<Labelled<'_, T>> = answers
        .iter()
        .map(|(node, value)| Labelled { node, value })
        .collect();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&labelled)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&labelled)?),
        Format::Table | Format::Wide => {}
    }
    Ok(())
}

/// Prints one streamed entry in a machine format.
pub fn print_entry<T: Serialize>(format: Format, node: &str, value: &T) -> anyhow::Result<()> {
    let labelled = Labelled { node, value };
    match format {
        Format::Json => println!("{}", serde_json::to_string(&labelled)?),
        Format::Yaml => print!("---\n{}", serde_yaml::to_string(&labelled)?),
        Format::Table | Format::Wide => {}
    }
    Ok(())
}

/// `ls -l` style permissions.
pub fn permissions(kind: &str, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        "directory" => 'd',
        "symlink" => 'l',
        "file" => '-',
        _ => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// `1h 02m 03s`.
pub fn duration(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m {seconds:02}s"),
        _ => format!("{hours}h {minutes:02}m {seconds:02}s"),
    }
}

/// A byte count for people: `16.4 MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An age as kubectl prints it: `45s`, `12m`, `5h`, `3d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A progress bar for a transfer of `total` bytes.
pub fn transfer_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Seconds since boot as the kernel log shows them: `[   12.345678]`.
pub fn uptime_stamp(micros: u64) -> String {
    format!("[{:5}.{:06}]", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectls() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(7199), "119m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86_400 + 5), "3d");
    }

    #[test]
    fn tables_align_their_columns() {
        let mut table = Table::new(&["NODE", "STATE"]);
        table.row(vec!["10.0.0.5:50000".into(), "running".into()]);
        table.row(vec!["n".into(), "x".into()]);
        assert_eq!(
            table.render(),
            "NODE            STATE\n10.0.0.5:50000  running\nn               x\n"
        );
    }

    #[test]
    fn small_formatters() {
        assert_eq!(permissions("directory", 0o755), "drwxr-xr-x");
        assert_eq!(permissions("file", 0o600), "-rw-------");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3723), "1h 02m 03s");
        assert_eq!(uptime_stamp(12_345_678), "[   12.345678]");
    }
}
