//! The examples that end each command's `--help`.

pub const TOP: &str = "\
Examples:
  driftless demo                                   build a small world with drift and scan it
  driftless --config driftless.toml scan           report drift; exit 2 when there is some
  driftless repair --dataset tax_rules --dry-run   print the writes a repair would make";

pub const SCAN: &str = "\
Examples:
  driftless scan --config driftless.toml --report json --out drift.json
  driftless scan --dataset tax_rules --stage eu-west --since 2026-12-01T10:00:00Z
  driftless scan --submit --no-wait                queue it for the fleet, print the run id";

pub const REPAIR: &str = "\
Examples:
  driftless repair --dry-run                       the plan only; nothing is written
  driftless repair --dataset tax_rules --keys rolled-back.txt
  driftless repair --approve 0193a1b2-...          continue a run the breaker held";

pub const WORKER: &str = "\
Examples:
  driftless worker --config /etc/driftless/driftless.toml
  driftless worker --roles scan --concurrency 2
  driftless worker --roles scan,repair,schedule --listen :8080   also serve the API";

pub const SERVE: &str = "\
Examples:
  DRIFTLESS_API_TOKENS=$(cat token) driftless serve --listen 127.0.0.1:8080
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/v1/status";

pub const RUNS: &str = "\
Examples:
  driftless runs --dataset tax_rules --limit 5
  driftless runs show 0193a1b2-... --report json --all";

pub const COMPLETIONS: &str = "\
Examples:
  driftless completions bash > /etc/bash_completion.d/driftless
  driftless completions zsh > \"${fpath[1]}/_driftless\"";

pub const DEMO: &str = "\
Examples:
  driftless demo
  driftless demo --dir /tmp/driftless-demo --report json";

pub const GATE: &str = "\
Examples:
  driftless gate --dataset tax_rules --stage test --max-age 26h
  driftless gate --dataset tax_rules --stage test --scan --max-divergent 0 --report json";
