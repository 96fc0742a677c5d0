//! Harness throughput: seeds per second and simulated time per wall time for the default
//! scenario (`swarm`), one thread. Criterion times single seeds; the summary line covers a
//! fixed batch so the two can be compared with `orchsim explore`'s report.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

fn bench_sim(c: &mut Criterion) {
    let sc = scenarios::find("swarm").unwrap();
    let batch = 100;
    let start = Instant::now();
    let mut sim_ms = 0;
    for seed in 0..batch {
        sim_ms += sc.run(seed).sim_ms;
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "sim/swarm: {batch} seeds in {wall:.2} s on one thread = {:.1} seeds/s; simulated {:.0} s = {:.0}x wall time",
        batch as f64 / wall,
        sim_ms as f64 / 1e3,
        sim_ms as f64 / 1e3 / wall
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
