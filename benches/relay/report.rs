//! Rows of results, each judged against its target, printed as they come
//! (one JSON line each) and at the end as a Markdown table.

use crate::scenarios::Latency;
use serde_json::json;
use std::process::Command;

/// One measured line of the report.
pub struct Row {
    scenario: String,
    queue: &'static str,
    label: String,
    rate: Option<f64>,
    /// Ratio and its minimum (0: informational).
    ratio: Option<(f64, f64)>,
    /// A value, its unit and its maximum (none: informational).
    value: Option<(f64, &'static str, Option<f64>)>,
    /// The first latency and, when there is one, the second.
    latency: Option<(Latency, Option<Latency>)>,
    /// What the two latencies measure.
    latency_names: (&'static str, &'static str),
    p99_max: Option<f64>,
    dead_tuples: Option<i64>,
    /// Anything else measured alongside, shown last.
    detail: Option<String>,
}

impl Row {
    pub fn new(scenario: impl Into<String>, queue: &'static str, label: String) -> Self {
        Self {
            scenario: scenario.into(),
            queue,
            label,
            rate: None,
            ratio: None,
            value: None,
            latency: None,
            latency_names: ("to ack", "to consumer"),
            p99_max: None,
            dead_tuples: None,
            detail: None,
        }
    }

    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }

    pub fn ratio(mut self, ratio: f64, min: f64) -> Self {
        self.ratio = Some((ratio, min));
        self
    }

    /// A value with an upper bound.
    pub fn value(mut self, value: f64, unit: &'static str, max: f64) -> Self {
        self.value = Some((value, unit, Some(max)));
        self
    }

    /// A value without a target.
    pub fn measure(mut self, value: f64, unit: &'static str) -> Self {
        self.value = Some((value, unit, None));
        self
    }

    pub fn latency(mut self, to_ack: Latency, to_consumer: Latency) -> Self {
        self.latency = Some((to_ack, Some(to_consumer)));
        self
    }

    /// One latency, of what `name` says.
    pub fn latency_one(mut self, name: &'static str, latency: Latency) -> Self {
        self.latency_names = (name, "");
        self.latency = Some((latency, None));
        self
    }

    /// Latencies that measure something else than commit to ack / consumer.
    pub fn latency_named(
        mut self,
        names: (&'static str, &'static str),
        first: Latency,
        second: Latency,
    ) -> Self {
        self.latency_names = names;
        self.latency(first, second)
    }

    pub fn p99_target(mut self, max_ms: f64) -> Self {
        self.p99_max = Some(max_ms);
        self
    }

    pub fn dead_tuples(mut self, n: i64) -> Self {
        self.dead_tuples = Some(n);
        self
    }

    pub fn detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    /// `None` when the row has no target.
    fn met(&self) -> Option<bool> {
        let checks = [
            self.ratio
                .filter(|(_, min)| *min > 0.0)
                .map(|(r, min)| r >= min),
            self.value.and_then(|(v, _, max)| max.map(|max| v <= max)),
            self.p99_max
                .zip(self.latency)
                .map(|(max, (ack, _))| ack.p99 <= max),
        ];
        checks.into_iter().flatten().reduce(|a, b| a && b)
    }

    fn target(&self) -> String {
        if let Some((_, min)) = self.ratio.filter(|(_, min)| *min > 0.0) {
            return format!("ratio ≥ {min:.2}");
        }
        if let Some((_, unit, Some(max))) = self.value {
            return format!("≤ {max} {unit}");
        }
        self.p99_max
            .map(|m| format!("p99 to ack ≤ {m} ms"))
            .unwrap_or_default()
    }

    fn result(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rate) = self.rate {
            parts.push(format!("{rate:.0} msg/s"));
        }
        if let Some((ratio, _)) = self.ratio {
            parts.push(format!("ratio {ratio:.2}"));
        }
        if let Some((v, unit, _)) = self.value {
            parts.push(format!("{v:.2} {unit}"));
        }
        if let Some((ack, consumer)) = self.latency {
            let (first, second) = self.latency_names;
            parts.push(format!(
                "{first} p50/p90/p99/max {:.1}/{:.1}/{:.1}/{:.1} ms",
                ack.p50, ack.p90, ack.p99, ack.max
            ));
            if let Some(consumer) = consumer {
                parts.push(format!(
                    "{second} p50/p99 {:.1}/{:.1} ms",
                    consumer.p50, consumer.p99
                ));
            }
        }
        if let Some(n) = self.dead_tuples {
            parts.push(format!("dead tuples {n}"));
        }
        parts.extend(self.detail.clone());
        parts.join("; ")
    }

    fn json(&self) -> serde_json::Value {
        let lat = |l: &Latency| json!({"p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max});
        json!({
            "scenario": self.scenario, "queue": self.queue, "case": self.label,
            "msgs_per_sec": self.rate, "ratio": self.ratio.map(|r| r.0),
            "value": self.value.map(|v| v.0), "unit": self.value.map(|v| v.1),
            "to_ack_ms": self.latency.map(|l| lat(&l.0)),
            "to_consumer_ms": self.latency.and_then(|l| l.1.as_ref().map(lat)),
            "latencies_measure": self.latency.map(|_| [self.latency_names.0, self.latency_names.1]),
            "dead_tuples": self.dead_tuples, "detail": self.detail, "target": self.target(), "met": self.met(),
        })
    }
}

/// The whole run.
pub struct Report {
    header: String,
    /// Lines under the header: how the run was set up, what it could not do.
    notes: Vec<String>,
    rows: Vec<Row>,
    /// Markdown sections after the table: (title, body).
    sections: Vec<(String, String)>,
}

impl Report {
    pub async fn new(options: &str) -> Self {
        let pg = crate::support::pg().await;
        let pg_version: String = pg
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get(0);
        // A large backlog outgrows a small buffer cache: the backlog row
        // reads differently with 128 MB (Debian's default) than with GBs.
        let shared_buffers: String = pg
            .query_one("SHOW shared_buffers", &[])
            .await
            .unwrap()
            .get(0);
        let header = format!(
            "{} · {} cores · {} · PostgreSQL {} (shared_buffers {shared_buffers}) · RabbitMQ {} · commit {} · {}",
            shell("date -u +%Y-%m-%d"),
            shell("nproc"),
            shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
            pg_version.split_whitespace().next().unwrap_or_default(),
            shell("rabbitmqctl -q version 2>/dev/null || echo unknown"),
            shell("git rev-parse --short HEAD 2>/dev/null || echo unknown"),
            options,
        );
        println!("# outbox-relay benchmark: {header}");
        Self {
            header,
            notes: Vec::new(),
            rows: Vec::new(),
            sections: Vec::new(),
        }
    }

    pub fn add(&mut self, row: Row) {
        println!("{}", row.json());
        self.rows.push(row);
    }

    /// A line under the header (and on stdout now).
    pub fn note(&mut self, note: String) {
        println!("# {note}");
        self.notes.push(note);
    }

    /// A section after the table (and on stdout now).
    pub fn section(&mut self, title: String, body: String) {
        println!("\n## {title}\n\n{body}");
        self.sections.push((title, body));
    }

    pub fn finish(self, out: &std::path::Path) {
        let mut md = self.header.clone();
        for note in &self.notes {
            md.push_str(&format!("\n\n{note}"));
        }
        md.push_str(
            "\n\n| scenario | queue | case | result | target | met |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.queue,
                r.label,
                r.result(),
                r.target(),
                met
            ));
        }
        for (title, body) in &self.sections {
            md.push_str(&format!("\n## {title}\n\n{body}"));
        }
        println!("\n{md}");
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(out, md).expect("write the report");
        println!("written to {}", out.display());
    }
}

fn shell(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
