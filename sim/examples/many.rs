fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let t = std::time::Instant::now();
    let mut sim_ms = 0;
    for seed in 0..n {
        let mut opts = sim::world::Options::base("default");
        opts.tick_ms = std::env::var("TICK").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        let plan = sim::world::generate_plan(&opts, seed);
        sim_ms += sim::world::run(&opts, &plan, seed).sim_ms;
    }
    let w = t.elapsed().as_secs_f64();
    println!("{n} seeds {w:.2}s = {:.1}/s; sim/wall {:.0}x", n as f64 / w, sim_ms as f64 / 1e3 / w);
}
