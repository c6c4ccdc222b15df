//! The `vizora-gateway` binary: everything happens in `cli::main`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vizora_gateway::cli::main().await
}
