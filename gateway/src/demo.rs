//! `vizora-gateway demo`: placeholder until the simulated screens land.

pub async fn run(_screens: usize) -> anyhow::Result<()> {
    anyhow::bail!("demo not implemented yet")
}
