//! The gateway binary with test hooks compiled in (see `vizora-gateway`'s `test-hooks` feature),
//! with the same demo module as the real binary (the CLI tests run `demo`).

#[path = "../../../gateway/src/demo.rs"]
mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vizora_gateway::cli::main(demo::run).await
}
