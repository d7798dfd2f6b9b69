//! Container logs: files in the CRI format kubelet uses
//! (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`), one file per container
//! attempt under `<data-dir>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`,
//! so `kubectl logs [--previous]` can be served from them later.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer output is split into partial (`P`) records.
pub const MAX_LINE: usize = 16 * 1024;

/// The directory holding one pod's logs.
pub fn pod_log_dir(data_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    data_dir
        .join("logs")
        .join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of one container attempt.
pub fn container_log_path(pod_log_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_log_dir.join(container).join(format!("{attempt}.log"))
}

/// Format one CRI log record (the text must not contain a newline).
pub fn format_record(time: &str, stream: &str, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + time.len() + 12);
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// RFC 3339 timestamp.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Whether the line continues in the next record.
    pub partial: bool,
    /// The text, without newline.
    pub text: String,
}

/// Parse one CRI log line.
pub fn parse_record(line: &str) -> Option<LogRecord> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let tag = it.next()?;
    let text = it.next().unwrap_or("").to_string();
    Some(LogRecord {
        time,
        stream,
        partial: tag == "P",
        text,
    })
}

/// The attempt numbers that have log files for a container, ascending.
pub fn attempts(pod_log_dir: &Path, container: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(pod_log_dir.join(container))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Read a container's log as plain text (what `kubectl logs` prints): the
/// latest attempt, or the one before it with `previous`.
pub fn read_container_log(
    pod_log_dir: &Path,
    container: &str,
    previous: bool,
) -> std::io::Result<String> {
    let attempts = attempts(pod_log_dir, container);
    let pick = if previous {
        attempts.iter().rev().nth(1)
    } else {
        attempts.last()
    };
    let Some(attempt) = pick else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no logs for container {container}"),
        ));
    };
    read_log_text(&container_log_path(pod_log_dir, container, *attempt))
}

/// Read one CRI log file as plain text, joining partial records.
pub fn read_log_text(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut out = String::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if let Some(r) = parse_record(&line) {
            out.push_str(&r.text);
            if !r.partial {
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_partials_join() {
        let dir = tempfile::tempdir().unwrap();
        let p = container_log_path(dir.path(), "app", 0);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut bytes = format_record("2024-01-01T00:00:00Z", "stdout", true, b"hel");
        bytes.extend(format_record(
            "2024-01-01T00:00:00Z",
            "stdout",
            false,
            b"lo",
        ));
        bytes.extend(format_record(
            "2024-01-01T00:00:01Z",
            "stderr",
            false,
            b"a b c",
        ));
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(read_log_text(&p).unwrap(), "hello\na b c\n");
        let p1 = container_log_path(dir.path(), "app", 1);
        std::fs::write(&p1, format_record("t", "stdout", false, b"second")).unwrap();
        assert_eq!(
            read_container_log(dir.path(), "app", false).unwrap(),
            "second\n"
        );
        assert_eq!(
            read_container_log(dir.path(), "app", true).unwrap(),
            "hello\na b c\n"
        );
        assert!(read_container_log(dir.path(), "other", false).is_err());
    }
}
