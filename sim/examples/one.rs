fn main() {
    let seed: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let opts = sim::world::Options::base("default");
    let plan = sim::world::generate_plan(&opts, seed);
    let t = std::time::Instant::now();
    let out = sim::world::run(&opts, &plan, seed);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &out.history {
        let k = serde_json::to_value(&e.ev).unwrap()["kind"].as_str().unwrap().to_string();
        *kinds.entry(k).or_default() += 1;
    }
    println!("wall {:?} sim {} ms error {:?}\n{kinds:?}", t.elapsed(), out.sim_ms, out.error);
    for (cid, r) in &out.finals {
        println!("{cid} {:?}", r.as_ref().map(|r| (r.state.step, r.state.version, r.state.collected_data.len())));
    }
    println!("hash {}", sim::history::trace_hash(&out.history));
}
