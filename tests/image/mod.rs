//! `deploy/Dockerfile`, read as Docker reads it (stages, instructions joined
//! over line continuations), checked for what can be checked without an
//! image builder: every base image pinned by digest, the dependencies built
//! from a cargo-chef recipe before the sources arrive, every build input in
//! the context and copied, the binary installed stripped, and the runtime
//! stage running it as a numeric non-root user under tini.
//! (`deploy/local/check-deploy.sh` also lints the file with hadolint, and
//! builds the image where a builder exists.)

mod ignore;

use crate::{ROOT, read};
use ignore::{copies, dockerignore_patterns, files_under, ignored};
use std::path::Path;

/// One `FROM` and the instructions up to the next.
#[derive(Debug)]
struct Stage {
    /// The image it starts from: `image:tag@sha256:...` or an earlier stage.
    from: String,
    name: Option<String>,
    /// (INSTRUCTION, its arguments), continuation lines joined.
    steps: Vec<(String, String)>,
}

impl Stage {
    fn args<'a>(&'a self, instruction: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.steps
            .iter()
            .filter(move |(i, _)| i == instruction)
            .map(|(_, args)| args.as_str())
    }

    /// The position of the first step for which `matches` holds.
    fn position(&self, matches: impl Fn(&str, &str) -> bool) -> Option<usize> {
        self.steps.iter().position(|(i, a)| matches(i, a))
    }
}

/// The Dockerfile's stages. Comments and parser directives are skipped; a
/// line ending in `\` continues on the next.
fn stages() -> Vec<Stage> {
    let text = read("deploy/Dockerfile");
    let mut logical: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !open) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body.trim(), true),
            None => (trimmed, false),
        };
        match logical.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(body);
            }
            _ => logical.push(body.to_owned()),
        }
        open = continues;
    }
    let mut stages: Vec<Stage> = Vec::new();
    for step in logical {
        let (instruction, args) = step.split_once(' ').unwrap_or((&step, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                from: words[0].to_owned(),
                name,
                steps: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().expect("an instruction before any FROM");
            stage.steps.push((instruction, args.trim().to_owned()));
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no stage named {name}"))
}

/// The stage that runs `cargo build`.
fn builder(stages: &[Stage]) -> &Stage {
    stages
        .iter()
        .find(|s| s.args("RUN").any(|run| run.contains("cargo build ")))
        .expect("a stage that runs cargo build")
}

/// The sources of a `COPY` line: its words but flags such as `--chown=...`
/// and the destination.
fn copy_sources(args: &str) -> Vec<&str> {
    let words: Vec<&str> = args
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    words[..words.len().saturating_sub(1)].to_vec()
}

/// The words of the `RUN` command holding `command`, from it to the next
/// `&&` (flags included).
fn command_words<'a>(run: &'a str, command: &str) -> Vec<&'a str> {
    let at = run
        .find(command)
        .unwrap_or_else(|| panic!("{command} in {run}"));
    let end = run[at..].find("&&").map_or(run.len(), |e| at + e);
    run[at..end].split_whitespace().collect()
}

#[test]
fn every_base_image_is_pinned_by_tag_and_digest() {
    let stages = stages();
    assert!(stages.len() >= 2, "{stages:?}");
    let mut earlier: Vec<&str> = Vec::new();
    for stage in &stages {
        if !earlier.contains(&stage.from.as_str()) {
            let (image, digest) = stage
                .from
                .split_once("@sha256:")
                .unwrap_or_else(|| panic!("FROM {} is not pinned by digest", stage.from));
            let (_, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("FROM {}: keep the tag beside the digest", stage.from));
            assert!(!tag.is_empty() && !tag.contains('/'), "{}", stage.from);
            let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
            assert!(
                digest.len() == 64 && digest.chars().all(hex),
                "FROM {}: a sha256 digest is 64 lowercase hex digits",
                stage.from
            );
        }
        earlier.extend(stage.name.as_deref());
    }
    // COPY --from names a stage defined before it.
    for (n, stage) in stages.iter().enumerate() {
        for copy in stage.args("COPY") {
            if let Some(from) = copy
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--from="))
            {
                let before: Vec<_> = stages[..n]
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                assert!(
                    before.contains(&from),
                    "COPY --from={from}: no earlier stage"
                );
            }
        }
    }
}

#[test]
fn the_dependencies_build_from_a_recipe_before_the_sources_are_copied() {
    let stages = stages();
    let chef = stage(&stages, "chef");
    assert!(
        chef.args("RUN")
            .any(|run| run.contains("cargo install cargo-chef --locked")),
        "the chef stage installs cargo-chef with its lock file: {chef:?}"
    );
    let planner = stages
        .iter()
        .find(|s| s.args("RUN").any(|r| r.contains("cargo chef prepare")))
        .expect("a stage that prepares the recipe");
    assert_eq!(planner.from, "chef");
    let build = builder(&stages);
    assert_eq!(build.from, "chef", "the builder has cargo-chef");
    let planner_name = planner.name.as_deref().unwrap();
    let recipe = build
        .position(|i, a| i == "COPY" && a.contains(&format!("--from={planner_name}")))
        .expect("the builder copies the recipe from the planner");
    assert!(build.steps[recipe].1.contains("recipe.json"));
    let cook = build
        .position(|i, a| i == "RUN" && a.contains("cargo chef cook"))
        .expect("the builder cooks the recipe");
    let sources = build
        .position(|i, a| i == "COPY" && !a.contains("--from"))
        .expect("the builder copies the sources");
    assert!(
        recipe < cook && cook < sources,
        "recipe, cook, then sources: {build:?}"
    );
    // The cook builds what the build will: same profile, lock and target,
    // or cargo rebuilds every dependency after the sources arrive.
    let cook_words = command_words(&build.steps[cook].1, "cargo chef cook");
    let build_run = build
        .args("RUN")
        .find(|r| r.contains("cargo build"))
        .unwrap();
    let build_words = command_words(build_run, "cargo build");
    for flag in ["--release", "--locked", "--bin", "outbox-relay"] {
        assert!(build_words.contains(&flag), "cargo build lacks {flag}");
        assert!(
            cook_words.contains(&flag),
            "cargo chef cook lacks {flag}, unlike cargo build"
        );
    }
    for (n, (instruction, _)) in build.steps[..cook].iter().enumerate() {
        assert!(
            instruction != "ARG",
            "step {n}: an ARG before the cook invalidates its layer"
        );
    }
}

#[test]
fn the_runtime_stage_runs_the_stripped_binary_as_a_numeric_non_root_user_under_tini() {
    let stages = stages();
    let runtime = stages.last().unwrap();
    let build = builder(&stages);
    let install = build.args("RUN").find(|r| r.contains("install ")).unwrap();
    let words = command_words(install, "install ");
    assert!(
        words.contains(&"--strip") || words.contains(&"-s"),
        "the binary is installed stripped: {words:?}"
    );
    let installed = *words.last().unwrap();
    let build_name = build.name.as_deref().unwrap();
    assert!(
        runtime
            .args("COPY")
            .any(|c| c == format!("--from={build_name} {installed} {installed}")),
        "the runtime copies the stripped {installed}: {runtime:?}"
    );
    let user = runtime
        .args("USER")
        .last()
        .expect("a USER in the runtime stage");
    for id in user.split(':') {
        let id: u32 = id
            .parse()
            .unwrap_or_else(|_| panic!("USER {user}: numeric ids"));
        assert_ne!(id, 0, "USER {user} is root");
    }
    assert!(
        runtime
            .args("RUN")
            .any(|r| r.contains("install") && r.contains(" tini")),
        "the runtime installs tini"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(runtime.args("ENTRYPOINT").last().expect("an ENTRYPOINT"))
            .expect("ENTRYPOINT in exec form (a JSON array), so tini is PID 1");
    assert_eq!(entrypoint, ["/usr/bin/tini", "--", installed]);
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_the_binary() {
    for stage in stages() {
        for copy in stage.args("COPY").filter(|c| !c.contains("--from")) {
            for source in copy_sources(copy) {
                let exists = source == "." || Path::new(ROOT).join(source).exists();
                assert!(exists, "COPY {copy}: {source} missing");
            }
        }
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves out target/"
    );
}

/// What `cargo build --bin outbox-relay` reads besides the registry:
/// `build.rs` compiles the contract in `proto/` and the test protos in
/// `tests/proto/`, and the migrations in `sql/` are compiled in.
const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "sql",
    "proto",
    "tests/proto",
];

#[test]
fn the_dockerfile_builder_stage_gets_every_build_input() {
    let stages = stages();
    let copied: Vec<&str> = builder(&stages)
        .args("COPY")
        .filter(|c| !c.contains("--from"))
        .flat_map(copy_sources)
        .collect();
    let patterns = dockerignore_patterns(&read(".dockerignore"));
    for input in BUILD_INPUTS {
        assert!(
            Path::new(ROOT).join(input).exists(),
            "{input} is listed as a build input but does not exist: update BUILD_INPUTS"
        );
        assert!(
            copied.iter().any(|source| copies(source, input)),
            "the Dockerfile's builder stage does not COPY {input} (it copies {copied:?}), \
             which `cargo build` needs"
        );
        for file in files_under(input) {
            assert!(
                !ignored(&patterns, &file),
                ".dockerignore leaves {file} out of the build context, which `cargo build` needs"
            );
        }
    }
}
