//! The timeline page of a run: one self-contained HTML file (no network, no external assets)
//! with a lane per host — clients, workers, Redis, Copilot, the sink — each request a bar from
//! invoke to answer coloured by status, leases as spans with their fences, commits as marks with
//! their versions, fault windows shaded over the lanes they hit, the violations marked at their
//! time with their evidence, and a click on anything showing the raw history entries behind it.
//! A conversation filter narrows it to one conversation.
//!
//! The drawing model (lanes and items) is computed here, where it can be tested; the page's
//! script only draws it, as SVG, and answers clicks.

use crate::history::{Entry, Ev, HostChange};
use crate::report::Verdict;
use crate::world::hosts::Host;
use serde::Serialize;
use std::collections::BTreeMap;

/// One thing drawn on a lane.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `req` (a request bar), `lease` (a lease span), `commit` (a mark), `fault` (a shaded
    /// window), `event` (a tick).
    pub kind: &'static str,
    /// Index into [`Model::lanes`].
    pub lane: usize,
    pub t0: u64,
    pub t1: u64,
    pub label: String,
    /// The CSS class that colours it (`ok`, `client-error`, `retry`, `server-error`,
    /// `no-answer`, `lease`, `lease-lost`, `commit`, `crash`, `link`, `clock`, `spike`, `sink`,
    /// `event`).
    pub class: &'static str,
    /// The conversation it belongs to, if any (the page filters on it).
    pub cid: Option<String>,
    /// Indices into the history of the entries behind it.
    pub entries: Vec<usize>,
}

/// A violation, marked across every lane at its time.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub t: u64,
    pub invariant: String,
    pub evidence: String,
}

/// What the page draws.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub title: String,
    pub end_ms: u64,
    pub lanes: Vec<String>,
    pub items: Vec<Item>,
    pub violations: Vec<Mark>,
    pub conversations: Vec<String>,
}

/// Lanes in reading order: clients, workers, then Redis, Copilot, the sink, anything else.
fn lane_rank(name: &str) -> (u8, usize, String) {
    match Host::parse(name) {
        Some(Host::Client(n)) => (0, n, String::new()),
        Some(Host::Worker(n)) => (1, n, String::new()),
        Some(Host::Redis) => (2, 0, String::new()),
        Some(Host::Copilot) => (3, 0, String::new()),
        Some(Host::Sink) => (4, 0, String::new()),
        _ => (5, 0, name.to_string()),
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        409 | 429 | 503 => "retry",
        400..=499 => "client-error",
        _ => "server-error",
    }
}

fn short(cid: &str) -> &str {
    &cid[..cid.len().min(8)]
}

/// The drawing model of a run.
pub fn model(v: &Verdict) -> Model {
    let h = &v.history;
    let end_ms = h.iter().map(|e| e.t_ms).max().unwrap_or(0).max(v.sim_ms).max(1);
    let redis = Host::Redis.name();
    let copilot = Host::Copilot.name();
    let sink = Host::Sink.name();
    // Every host the history names, and the client of every request.
    let mut names: Vec<String> = Vec::new();
    let mut client_of: BTreeMap<u64, String> = BTreeMap::new();
    let add = |n: &str, names: &mut Vec<String>| {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    };
    for e in h {
        match &e.ev {
            Ev::Invoke { req, client, worker, .. } => {
                add(client, &mut names);
                add(worker, &mut names);
                client_of.insert(*req, client.clone());
            }
            Ev::LeaseTaken { worker, .. }
            | Ev::LeaseLost { worker, .. }
            | Ev::CopilotCalled { worker, .. }
            | Ev::Transition { worker, .. }
            | Ev::Committed { worker, .. }
            | Ev::CommitRejected { worker, .. }
            | Ev::Released { worker, .. }
            | Ev::Replayed { worker, .. }
            | Ev::Submitted { worker, .. }
            | Ev::CancelCommitted { worker, .. } => add(worker, &mut names),
            Ev::ModelCommit { .. } | Ev::RedisClockJumped { .. } | Ev::RedisLostWrites { .. } => add(&redis, &mut names),
            Ev::CopilotReply { .. } | Ev::CopilotSawForeignData { .. } | Ev::CopilotBadContext { .. } => add(&copilot, &mut names),
            Ev::SinkReceived { .. } => add(&sink, &mut names),
            Ev::HostFault { host, change } => {
                add(host, &mut names);
                if let HostChange::CutOff { peer } | HostChange::RepliesLost { peer } | HostChange::Reconnected { peer } = change {
                    add(peer, &mut names);
                }
            }
            Ev::Response { .. } | Ev::NoResponse { .. } => {}
        }
    }
    names.sort_by_key(|n| lane_rank(n));
    let lane = |n: &str| names.iter().position(|x| x == n).unwrap_or(0);

    let mut items: Vec<Item> = Vec::new();
    let mut conversations: Vec<String> = Vec::new();
    let seen_cid = |c: &str, conversations: &mut Vec<String>| {
        if !conversations.iter().any(|x| x == c) {
            conversations.push(c.to_string());
        }
    };
    // Open requests by number, open leases by (worker, cid, fence), open faults by (host,
    // what), each with the index of the item drawn for it.
    let mut open_req: BTreeMap<u64, usize> = BTreeMap::new();
    let mut open_lease: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
    let mut open_fault: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut cid_of_req: BTreeMap<u64, String> = BTreeMap::new();
    for (i, e) in h.iter().enumerate() {
        let t = e.t_ms;
        let point = |items: &mut Vec<Item>, lane: usize, label: String, class: &'static str, kind: &'static str, cid: Option<&str>| {
            items.push(Item { kind, lane, t0: t, t1: t, label, class, cid: cid.map(str::to_string), entries: vec![i] });
        };
        match &e.ev {
            Ev::Invoke { req, client, op, cid, .. } => {
                if let Some(c) = cid {
                    seen_cid(c, &mut conversations);
                    cid_of_req.insert(*req, c.clone());
                }
                open_req.insert(*req, items.len());
                items.push(Item {
                    kind: "req",
                    lane: lane(client),
                    t0: t,
                    t1: end_ms,
                    label: format!("#{req} {op}{}", cid.as_deref().map(|c| format!(" c={}", short(c))).unwrap_or_default()),
                    class: "no-answer",
                    cid: cid.clone(),
                    entries: vec![i],
                });
            }
            Ev::Response { req, status, body, .. } => {
                // A create's answer names the conversation it made.
                if let Some(id) = body["id"].as_str() {
                    seen_cid(id, &mut conversations);
                    cid_of_req.entry(*req).or_insert_with(|| id.to_string());
                }
                match open_req.remove(req) {
                    Some(k) => {
                        let it = &mut items[k];
                        it.t1 = t;
                        it.class = status_class(*status);
                        it.label += &format!(" -> {status}");
                        it.entries.push(i);
                        if it.cid.is_none() {
                            it.cid = cid_of_req.get(req).cloned();
                        }
                    }
                    None => {
                        let l = client_of.get(req).map(|c| lane(c)).unwrap_or(0);
                        point(&mut items, l, format!("#{req} -> {status}"), status_class(*status), "event", None);
                    }
                }
            }
            Ev::NoResponse { req, reason } => {
                if let Some(k) = open_req.remove(req) {
                    let it = &mut items[k];
                    it.t1 = t;
                    it.label += &format!(" -> no answer ({reason})");
                    it.entries.push(i);
                }
            }
            Ev::LeaseTaken { worker, cid, fence, version, .. } => {
                seen_cid(cid, &mut conversations);
                open_lease.insert((worker.clone(), cid.clone(), *fence), items.len());
                items.push(Item {
                    kind: "lease",
                    lane: lane(worker),
                    t0: t,
                    t1: end_ms,
                    label: format!("lease c={} fence {fence} (loaded v{version})", short(cid)),
                    class: "lease",
                    cid: Some(cid.clone()),
                    entries: vec![i],
                });
            }
            Ev::LeaseLost { worker, cid, fence } | Ev::CommitRejected { worker, cid, fence } | Ev::Released { worker, cid, fence, .. } => {
                let lost = !matches!(e.ev, Ev::Released { .. });
                if let Some(k) = open_lease.remove(&(worker.clone(), cid.clone(), *fence)) {
                    let it = &mut items[k];
                    it.t1 = t;
                    it.entries.push(i);
                    if lost {
                        it.class = "lease-lost";
                        it.label += if matches!(e.ev, Ev::LeaseLost { .. }) { ": LOST" } else { ": commit REJECTED" };
                    } else {
                        it.label += ": given up";
                    }
                } else {
                    point(
                        &mut items,
                        lane(worker),
                        crate::report::describe(&e.ev),
                        if lost { "lease-lost" } else { "event" },
                        "event",
                        Some(cid),
                    );
                }
            }
            Ev::Committed { worker, cid, fence, version, .. } | Ev::CancelCommitted { worker, cid, fence, version, .. } => {
                if let Some(k) = open_lease.remove(&(worker.clone(), cid.clone(), *fence)) {
                    let it = &mut items[k];
                    it.t1 = t;
                    it.entries.push(i);
                    it.label += &format!(": committed v{version}");
                }
                point(
                    &mut items,
                    lane(worker),
                    format!("committed c={} v{version} (fence {fence})", short(cid)),
                    "commit",
                    "commit",
                    Some(cid),
                );
            }
            Ev::ModelCommit { cid, fence, version, .. } => {
                point(
                    &mut items,
                    lane(&redis),
                    format!("applied c={} v{version} (fence {fence})", short(cid)),
                    "commit",
                    "commit",
                    Some(cid),
                );
            }
            Ev::CopilotReply { cid, latency_ms, spike, .. } => {
                if *spike {
                    items.push(Item {
                        kind: "fault",
                        lane: lane(&copilot),
                        t0: t.saturating_sub(*latency_ms),
                        t1: t,
                        label: format!("Copilot latency spike: {latency_ms} ms"),
                        class: "spike",
                        cid: None,
                        entries: vec![i],
                    });
                }
                point(&mut items, lane(&copilot), crate::report::describe(&e.ev), "event", "event", Some(cid));
            }
            Ev::CopilotCalled { worker, cid, .. }
            | Ev::Transition { worker, cid, .. }
            | Ev::Replayed { worker, cid, .. }
            | Ev::Submitted { worker, cid, .. } => {
                point(&mut items, lane(worker), crate::report::describe(&e.ev), "event", "event", Some(cid));
            }
            Ev::CopilotSawForeignData { cid, .. } | Ev::CopilotBadContext { cid, .. } => {
                point(&mut items, lane(&copilot), crate::report::describe(&e.ev), "server-error", "event", Some(cid));
            }
            Ev::SinkReceived { cid, fault, .. } => {
                let class = if fault.is_some() { "sink" } else { "event" };
                point(&mut items, lane(&sink), crate::report::describe(&e.ev), class, "event", Some(cid));
            }
            Ev::RedisClockJumped { .. } => point(&mut items, lane(&redis), crate::report::describe(&e.ev), "clock", "fault", None),
            Ev::RedisLostWrites { .. } => point(&mut items, lane(&redis), crate::report::describe(&e.ev), "crash", "fault", None),
            Ev::HostFault { host, change } => {
                // A window opens at a crash, a cut link or a skewed clock and closes when the
                // host restarts, reconnects or is set right; it is shaded over each lane it hits.
                let (what, class, opens, peer): (String, &'static str, bool, Option<&str>) = match change {
                    HostChange::Crashed => ("power".into(), "crash", true, None),
                    HostChange::Restarted => ("power".into(), "crash", false, None),
                    HostChange::CutOff { peer } | HostChange::RepliesLost { peer } => (format!("link {peer}"), "link", true, Some(peer)),
                    HostChange::Reconnected { peer } => (format!("link {peer}"), "link", false, Some(peer)),
                    HostChange::ClockSkewed => ("clock".into(), "clock", true, None),
                    HostChange::ClockSetRight => ("clock".into(), "clock", false, None),
                };
                let key = (host.clone(), what);
                if matches!(change, HostChange::Crashed) {
                    // What the host held ends with it.
                    let held: Vec<(String, String, u64)> = open_lease.keys().filter(|k| &k.0 == host).cloned().collect();
                    for idx in held.iter().filter_map(|k| open_lease.remove(k)) {
                        let it = &mut items[idx];
                        it.t1 = t;
                        it.class = "lease-lost";
                        it.label += ": host crashed";
                        it.entries.push(i);
                    }
                }
                if opens {
                    let mut drawn = Vec::new();
                    for l in std::iter::once(host.as_str()).chain(peer) {
                        drawn.push(items.len());
                        items.push(Item {
                            kind: "fault",
                            lane: lane(l),
                            t0: t,
                            t1: end_ms,
                            label: format!("FAULT {host} {change}"),
                            class,
                            cid: None,
                            entries: vec![i],
                        });
                    }
                    open_fault.insert(key, drawn);
                } else if let Some(drawn) = open_fault.remove(&key) {
                    for k in drawn {
                        items[k].t1 = t;
                        items[k].entries.push(i);
                        items[k].label += &format!(" (until {host} {change})");
                    }
                } else {
                    point(&mut items, lane(host), format!("FAULT {host} {change}"), class, "event", None);
                }
            }
        }
    }
    let violations =
        v.violations.iter().map(|x| Mark { t: x.at_ms, invariant: x.invariant.name().to_string(), evidence: x.evidence.clone() }).collect();
    Model {
        title: format!("{} seed {} ({}){}", v.scenario, v.seed, v.worker, if v.passed() { " — passed" } else { " — INVARIANT VIOLATED" }),
        end_ms,
        lanes: names,
        items,
        violations,
        conversations,
    }
}

/// JSON for embedding in a `<script>` element: `</` and the line separators a script cannot
/// hold are escaped, so no history text can end the element early.
fn script_json<T: Serialize>(x: &T) -> String {
    serde_json::to_string(x)
        .unwrap_or_else(|_| "null".into())
        .replace("</", "<\\/")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: the model and the raw history entries embedded as JSON, drawn by the script below.
pub fn page(v: &Verdict) -> String {
    let m = model(v);
    let entries: Vec<&Entry> = v.history.iter().collect();
    let mut s = String::with_capacity(4096 + v.history.len() * 300);
    s += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>";
    s += &escape(&m.title);
    s += "</title>\n<style>\n";
    s += STYLE;
    s += "</style></head><body>\n<header><h1>";
    s += &escape(&m.title);
    s += "</h1><div id=\"controls\"><label>conversation <select id=\"cid\"><option value=\"\">all</option></select></label> \
          <label>zoom <select id=\"zoom\"><option value=\"0\">fit</option><option value=\"0.1\">0.1 px/ms</option>\
          <option value=\"0.5\">0.5 px/ms</option><option value=\"2\">2 px/ms</option><option value=\"10\">10 px/ms</option></select></label> \
          <span id=\"legend\"></span></div></header>\n<div id=\"violations\"></div>\n<div id=\"scroll\"><svg id=\"tl\" xmlns=\"http://www.w3.org/2000/svg\"></svg></div>\n\
          <pre id=\"raw\">Click a bar, span, mark or shaded window to see its history entries.</pre>\n";
    s += "<script id=\"model\" type=\"application/json\">";
    s += &script_json(&m);
    s += "</script>\n<script id=\"entries\" type=\"application/json\">";
    s += &script_json(&entries);
    s += "</script>\n<script>\n";
    s += SCRIPT;
    s += "</script>\n</body></html>\n";
    s
}

const STYLE: &str = r#"body{font:13px system-ui,sans-serif;margin:0;color:#222}
header{padding:6px 10px;background:#f4f4f4;border-bottom:1px solid #ccc}
h1{font-size:15px;margin:0 0 4px}
#violations{padding:4px 10px;color:#a00}
#scroll{overflow:auto;max-height:70vh;border-bottom:1px solid #ccc}
#raw{margin:0;padding:8px 10px;white-space:pre-wrap;max-height:30vh;overflow:auto;background:#fafafa}
.lane-bg{fill:#fff}.lane-bg.odd{fill:#f7f7f7}
.lane-name{font-size:12px;fill:#333}
.req.ok{fill:#5a5}.req.client-error{fill:#e90}.req.retry{fill:#dc3}.req.server-error{fill:#d33}.req.no-answer{fill:#999}
.lease{fill:#69c;opacity:.55}.lease-lost{fill:#c36;opacity:.7}
.commit{fill:#124;stroke:#fff;stroke-width:.5}
.fault{opacity:.22}.fault.crash{fill:#d00}.fault.link{fill:#f80}.fault.clock{fill:#80f}.fault.spike{fill:#fc0}
.event{fill:#555}.event.server-error,.event.lease-lost{fill:#c00}.event.sink{fill:#f80}
.violation line{stroke:#e00;stroke-width:2}.violation text{fill:#e00;font-weight:bold}
.sel{stroke:#000;stroke-width:2}
.axis{stroke:#ccc}.axis-label{font-size:10px;fill:#777}
"#;

const SCRIPT: &str = r#"(function(){
const M=JSON.parse(document.getElementById('model').textContent);
const E=JSON.parse(document.getElementById('entries').textContent);
const NS='http://www.w3.org/2000/svg';
const LANE=26,TOP=24,LEFT=120;
const svg=document.getElementById('tl'),raw=document.getElementById('raw');
const cidSel=document.getElementById('cid'),zoomSel=document.getElementById('zoom');
for(const c of M.conversations){const o=document.createElement('option');o.value=c;o.textContent=c.slice(0,8);cidSel.appendChild(o);}
const vd=document.getElementById('violations');
M.violations.forEach((v,i)=>{const d=document.createElement('div');d.textContent='['+v.invariant+'] at '+v.t+' ms: '+v.evidence;vd.appendChild(d);});
function el(n,a,p){const e=document.createElementNS(NS,n);for(const k in a)e.setAttribute(k,a[k]);(p||svg).appendChild(e);return e;}
function show(title,idx){raw.textContent=title+'\n\n'+idx.map(i=>'#'+i+' '+JSON.stringify(E[i],null,1)).join('\n');}
let selected=null;
function draw(){
  while(svg.firstChild)svg.removeChild(svg.firstChild);
  const avail=Math.max(600,document.getElementById('scroll').clientWidth-LEFT-20);
  const z=parseFloat(zoomSel.value)||avail/M.end_ms;
  const W=LEFT+M.end_ms*z+20,H=TOP+M.lanes.length*LANE+8;
  svg.setAttribute('width',W);svg.setAttribute('height',H);
  const x=t=>LEFT+t*z;
  M.lanes.forEach((n,i)=>{
    const g=el('g',{'class':'lane','data-lane':n});
    el('rect',{'class':'lane-bg'+(i%2?' odd':''),x:0,y:TOP+i*LANE,width:W,height:LANE},g);
    const t=el('text',{'class':'lane-name',x:4,y:TOP+i*LANE+17},g);t.textContent=n;
  });
  const step=[1,2,5,10,20,50,100,200,500,1000,2000,5000,10000,20000,60000].find(s=>s*z>=80)||60000;
  for(let t=0;t<=M.end_ms;t+=step){el('line',{'class':'axis',x1:x(t),x2:x(t),y1:TOP-4,y2:H});const l=el('text',{'class':'axis-label',x:x(t)+2,y:12});l.textContent=t+' ms';}
  const only=cidSel.value;
  const order={fault:0,lease:1,req:2,commit:3,event:4};
  const idx=M.items.map((_,i)=>i).sort((a,b)=>order[M.items[a].kind]-order[M.items[b].kind]);
  for(const k of idx){
    const it=M.items[k];
    if(only&&it.cid&&it.cid!==only)continue;
    const y=TOP+it.lane*LANE;
    let e;
    if(it.kind==='fault'){e=el('rect',{x:x(it.t0),y:y,width:Math.max(3,(it.t1-it.t0)*z),height:LANE});}
    else if(it.kind==='lease'){e=el('rect',{x:x(it.t0),y:y+3,width:Math.max(2,(it.t1-it.t0)*z),height:LANE-6,rx:2});}
    else if(it.kind==='req'){e=el('rect',{x:x(it.t0),y:y+8,width:Math.max(2,(it.t1-it.t0)*z),height:10,rx:2});}
    else if(it.kind==='commit'){const cx=x(it.t0),cy=y+LANE/2;e=el('path',{d:'M'+cx+' '+(cy-7)+'L'+(cx+5)+' '+cy+'L'+cx+' '+(cy+7)+'L'+(cx-5)+' '+cy+'Z'});}
    else{e=el('rect',{x:x(it.t0)-1,y:y+4,width:2,height:LANE-8});}
    e.setAttribute('class',it.kind+' '+it.class);
    e.setAttribute('data-item',k);
    const tt=el('title',{},e);tt.textContent=it.label+' ['+it.t0+(it.t1!==it.t0?'..'+it.t1:'')+' ms]';
  }
  M.violations.forEach((v,i)=>{
    const g=el('g',{'class':'violation',id:'violation-'+i,'data-t':v.t});
    el('line',{x1:x(v.t),x2:x(v.t),y1:TOP-6,y2:H},g);
    const t=el('text',{x:x(v.t)+3,y:TOP-8},g);t.textContent='✖ '+v.invariant;
    const tt=el('title',{},g);tt.textContent=v.evidence;
  });
}
svg.addEventListener('click',ev=>{
  let n=ev.target;while(n&&n!==svg&&!n.getAttribute('data-item')&&!(n.id||'').startsWith('violation-'))n=n.parentNode;
  if(!n||n===svg)return;
  if(selected)selected.classList.remove('sel');selected=n;n.classList.add('sel');
  if((n.id||'').startsWith('violation-')){const v=M.violations[+n.id.slice(10)];
    const near=E.map((e,i)=>i).filter(i=>Math.abs(E[i].t_ms-v.t)<=50);show('['+v.invariant+'] at '+v.t+' ms: '+v.evidence+'\n\nentries within 50 ms:',near);return;}
  const it=M.items[+n.getAttribute('data-item')];show(it.label,it.entries);
});
cidSel.addEventListener('change',draw);zoomSel.addEventListener('change',draw);
document.getElementById('legend').textContent=M.lanes.length+' lanes, '+M.items.length+' items, '+E.length+' history entries, '+M.end_ms+' ms';
draw();
document.body.setAttribute('data-drawn',String(M.items.length));
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Invariant, Violation};
    use crate::world::faults::FaultPlan;

    fn e(t_ms: u64, ev: Ev) -> Entry {
        Entry { t_ms, ev }
    }

    fn verdict(history: Vec<Entry>, violations: Vec<Violation>) -> Verdict {
        let options = crate::suite::find("calm").unwrap().options(1);
        Verdict {
            worker: "orchsim".into(),
            scenario: "calm".into(),
            seed: 1,
            options,
            plan: FaultPlan::default(),
            trace_hash: "0".into(),
            sim_ms: 1000,
            violations,
            counters: Default::default(),
            history,
        }
    }

    fn run_history() -> Vec<Entry> {
        let invoke = |req, t| {
            e(
                t,
                Ev::Invoke {
                    req,
                    client: "client-0".into(),
                    user: "u0".into(),
                    worker: "worker-1".into(),
                    op: "turn".into(),
                    cid: Some("c0ffee00aa".into()),
                    key: Some("k".into()),
                    query: Some("hi".into()),
                    duplicate: false,
                    expect: None,
                    manner: None,
                    meant: None,
                },
            )
        };
        vec![
            e(5, Ev::HostFault { host: "worker-1".into(), change: HostChange::CutOff { peer: "redis".into() } }),
            invoke(1, 10),
            e(
                20,
                Ev::LeaseTaken {
                    worker: "worker-1".into(),
                    cid: "c0ffee00aa".into(),
                    user: "u0".into(),
                    idem_key: "k".into(),
                    fence: 3,
                    version: 2,
                },
            ),
            e(30, Ev::ModelCommit { cid: "c0ffee00aa".into(), idem_key: "k".into(), fence: 3, version: 3, record: serde_json::json!({}) }),
            e(
                35,
                Ev::Committed {
                    worker: "worker-1".into(),
                    cid: "c0ffee00aa".into(),
                    user: "u0".into(),
                    idem_key: "k".into(),
                    fence: 3,
                    version: 3,
                },
            ),
            e(40, Ev::Response { req: 1, status: 200, retry_after: false, body: serde_json::json!({}) }),
            invoke(2, 50),
            e(60, Ev::HostFault { host: "worker-1".into(), change: HostChange::Reconnected { peer: "redis".into() } }),
            e(70, Ev::NoResponse { req: 2, reason: "deadline".into() }),
        ]
    }

    #[test]
    fn lanes_bars_spans_marks_and_windows_come_from_the_history() {
        let v = verdict(run_history(), vec![]);
        let m = model(&v);
        assert_eq!(m.lanes, vec!["client-0", "worker-1", "redis"]);
        let req: Vec<&Item> = m.items.iter().filter(|i| i.kind == "req").collect();
        assert_eq!((req[0].t0, req[0].t1, req[0].class, req[0].lane), (10, 40, "ok", 0));
        assert_eq!((req[1].t0, req[1].t1, req[1].class), (50, 70, "no-answer"));
        let lease = m.items.iter().find(|i| i.kind == "lease").unwrap();
        assert_eq!((lease.t0, lease.t1, lease.lane), (20, 35, 1));
        assert!(lease.label.contains("fence 3") && lease.label.contains("v3"), "{}", lease.label);
        let commits: Vec<usize> = m.items.iter().filter(|i| i.kind == "commit").map(|i| i.lane).collect();
        assert_eq!(commits, vec![2, 1], "Redis applied it, then the worker saw it committed");
        // The cut link is shaded on both lanes it hits, from the cut to the reconnection.
        let faults: Vec<(usize, u64, u64)> = m.items.iter().filter(|i| i.kind == "fault").map(|i| (i.lane, i.t0, i.t1)).collect();
        assert_eq!(faults, vec![(1, 5, 60), (2, 5, 60)]);
        assert_eq!(m.conversations, vec!["c0ffee00aa"]);
        // Every entry is behind some item, so a click can show it.
        let mut behind: Vec<usize> = m.items.iter().flat_map(|i| i.entries.clone()).collect();
        behind.sort();
        behind.dedup();
        assert_eq!(behind, (0..v.history.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_violation_is_marked_and_no_history_text_can_end_the_script() {
        let mut h = run_history();
        if let Ev::Invoke { query, .. } = &mut h[1].ev {
            *query = Some("</script><script>alert(1)</script>".into());
        }
        let v = verdict(h, vec![Violation { invariant: Invariant::LostData, at_ms: 45, evidence: "field <gone>".into() }]);
        let m = model(&v);
        assert_eq!(m.violations[0].t, 45);
        assert!(m.title.contains("VIOLATED"));
        let p = page(&v);
        assert_eq!(p.matches("</script>").count(), 3, "only the page's own three script elements end");
        assert!(!p.contains(" src=") && !p.contains(" href="), "no external assets: nothing is loaded");
        assert!(p.contains(r#"<\/script><script>alert(1)<\/script>"#));
    }
}
