//! Harness throughput: seeds per second and simulated time per wall time for the default
//! scenario (`swarm`), one thread. Criterion times single seeds; the summary line covers a
//! fixed batch so the two can be compared with `orchsim explore`'s report. The limit to
//! compare with is raw turmoil: request/response round trips per wall second between two
//! hosts doing nothing else, printed first.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

/// Round trips per wall second of an echo over one turmoil TCP connection (1 ms ticks, 1 ms
/// latency): the ceiling on simulated message exchange on this machine.
fn raw_turmoil_round_trips() -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ROUND_TRIPS: u32 = 20_000;
    let mut sim = turmoil::Builder::new()
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(3_600))
        .build();
    sim.host("echo", || async {
        let l = turmoil::net::TcpListener::bind(("0.0.0.0", 7)).await?;
        loop {
            let (mut s, _) = l.accept().await?;
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    sim.client("client", async {
        let mut s = turmoil::net::TcpStream::connect(("echo", 7)).await?;
        let mut b = [0u8; 16];
        for _ in 0..ROUND_TRIPS {
            s.write_all(b"ping").await?;
            s.read_exact(&mut b[..4]).await?;
        }
        Ok(())
    });
    let start = Instant::now();
    sim.run().unwrap();
    let wall = start.elapsed().as_secs_f64();
    let rps = ROUND_TRIPS as f64 / wall;
    println!("turmoil raw: {ROUND_TRIPS} TCP round trips in {wall:.2} s on one thread = {rps:.0} round trips/s");
    rps
}

fn bench_sim(c: &mut Criterion) {
    let raw = raw_turmoil_round_trips();
    let sc = scenarios::find("swarm").unwrap();
    let batch = 100;
    let start = Instant::now();
    let mut sim_ms = 0;
    for seed in 0..batch {
        sim_ms += sc.run(seed).sim_ms;
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "sim/swarm: {batch} seeds in {wall:.2} s on one thread = {:.1} seeds/s; simulated {:.0} s = {:.0}x wall time; \
         one seed costs the wall time of {:.0} raw turmoil round trips",
        batch as f64 / wall,
        sim_ms as f64 / 1e3,
        sim_ms as f64 / 1e3 / wall,
        raw * wall / batch as f64
    );
    let mut seed = 1_000;
    c.bench_function("sim/swarm-one-seed", |b| {
        b.iter(|| {
            seed += 1;
            sc.run(seed).sim_ms
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench_sim
}
criterion_main!(benches);
