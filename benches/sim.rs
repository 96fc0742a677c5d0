//! Harness throughput, one thread: raw turmoil round trips per second (two hosts doing nothing
//! else: the limit), then for every default scenario seeds/s, simulated/wall time and the cost
//! of one seed in raw round trips, all in one run so they compare; criterion then times single
//! `swarm` seeds. `orchsim explore` reports seeds/s per thread the same way.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

/// The allocator `orchsim` itself runs with (src/main.rs), so the figures match `explore`'s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Round trips per wall second of an echo over one turmoil TCP connection (1 ms ticks, 1 ms
/// latency): the ceiling on simulated message exchange on this machine.
fn raw_turmoil_round_trip_rate() -> f64 {
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
    ROUND_TRIPS as f64 / start.elapsed().as_secs_f64()
}

/// The median of 5 measurements of [`raw_turmoil_round_trip_rate`]: one lasts a tenth of a
/// second, too short to trust alone on a shared machine.
fn raw_turmoil_round_trips() -> f64 {
    let mut runs: Vec<f64> = (0..5).map(|_| raw_turmoil_round_trip_rate()).collect();
    runs.sort_by(f64::total_cmp);
    let shown: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    println!("turmoil raw: {} round trips/s on one thread (median of 5 runs: {})", shown[2], shown.join(", "));
    runs[2]
}

fn bench_sim(c: &mut Criterion) {
    let raw = raw_turmoil_round_trips();
    // Every default scenario on one thread, `SIM_BENCH_SEEDS` seeds each (default 100 for
    // swarm, 40 for the others): seeds/s, simulated/wall, and one seed's cost in raw round trips.
    let seeds_of =
        |name: &str| std::env::var("SIM_BENCH_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(if name == "swarm" { 100 } else { 40 });
    println!("{:<12} {:>6} {:>10} {:>10} {:>22}", "scenario", "seeds", "seeds/s", "sim/wall", "raw round trips/seed");
    for sc in scenarios::default_set() {
        let batch: u64 = seeds_of(sc.name);
        let start = Instant::now();
        let mut sim_ms = 0;
        for seed in 0..batch {
            sim_ms += sc.run(seed).sim_ms;
        }
        let wall = start.elapsed().as_secs_f64();
        println!(
            "{:<12} {batch:>6} {:>10.1} {:>9.0}x {:>22.0}",
            sc.name,
            batch as f64 / wall,
            sim_ms as f64 / 1e3 / wall,
            raw * wall / batch as f64
        );
    }
    // The cost of one swarm seed again, steadier: 5 rounds, each a raw run right beside a batch of
    // swarm seeds (so both see the same machine), the median of the rounds' costs.
    let sc = scenarios::find("swarm").unwrap();
    let mut costs: Vec<f64> = (0..5u64)
        .map(|round| {
            let raw = raw_turmoil_round_trip_rate();
            let start = Instant::now();
            for seed in round * 40..(round + 1) * 40 {
                sc.run(seed);
            }
            raw * start.elapsed().as_secs_f64() / 40.0
        })
        .collect();
    costs.sort_by(f64::total_cmp);
    let shown: Vec<String> = costs.iter().map(|c| format!("{c:.0}")).collect();
    println!("swarm, 5 rounds of a raw run beside 40 seeds: {} raw round trips/seed (median; {})", shown[2], shown.join(", "));
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
