//! The gateway binary with test hooks compiled in (see `vizora-gateway`'s `test-hooks` feature).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vizora_gateway::cli::main().await
}
