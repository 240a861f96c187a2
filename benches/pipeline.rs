//! `render` (kube-proxy's dump generated as text), `parse` (the dump read back, lines per
//! second), `sync` (what one change costs svcpath: the new rules and kube-proxy's partial
//! restore), `sim` (new flows per second through the iptables model of a 1k-Service cluster, by
//! conntrack-less sampling, faithful and compiled).

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use svcpath::dataplane::netfilter::compiled::CompiledNetfilter;
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::{self, NodeEnv};
use svcpath::model::IpFamily;
use svcpath::model::rules::Family;
use svcpath::study::cost::partial_restore;
use svcpath::study::synthetic;

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for services in [1_000usize, 10_000] {
        let cluster = common::cluster(services, 10);
        let node = cluster.node_view(None, &[]).expect("synthetic node");
        g.measurement_time(Duration::from_secs(if services >= 10_000 { 20 } else { 3 }));
        g.bench_with_input(BenchmarkId::new("iptables_x10", services), &services, |b, _| {
            b.iter(|| {
                let dump =
                    iptables::sync_node_dump(&cluster, &node, IpFamily::V4, NodeEnv::default());
                black_box(iptables_save::render(&dump).len())
            })
        });
        let dump = iptables::sync_node_dump(&cluster, &node, IpFamily::V4, NodeEnv::default());
        g.bench_with_input(BenchmarkId::new("text_only_x10", services), &services, |b, _| {
            b.iter(|| black_box(iptables_save::render(&dump).len()))
        });
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for services in [1_000usize, 10_000] {
        let n = common::node(services, 10);
        g.throughput(Throughput::Elements(n.text.lines().count() as u64));
        g.measurement_time(Duration::from_secs(if services >= 10_000 { 8 } else { 3 }));
        g.bench_with_input(BenchmarkId::new("iptables_save_x10", services), &services, |b, _| {
            b.iter(|| black_box(iptables_save::parse(&n.text, Family::V4).map(|r| r.tables.len())))
        });
    }
    g.finish();
}

fn sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for services in [1_000usize, 3_000] {
        let cluster = common::cluster(services, 10);
        let node = cluster.node_view(None, &[]).expect("synthetic node");
        let before = iptables::sync(&cluster, &node, IpFamily::V4, NodeEnv::default()).payload;
        let after_cluster = synthetic::with_extra_endpoint(&cluster);
        let s = &cluster.services[0];
        let ports = vec![(s.port_name(&s.ports[0]), s.ports[0].protocol)];
        g.measurement_time(Duration::from_secs(5));
        g.bench_with_input(BenchmarkId::new("endpoint_added_x10", services), &services, |b, _| {
            b.iter(|| {
                let after =
                    iptables::sync(&after_cluster, &node, IpFamily::V4, NodeEnv::default()).payload;
                black_box(partial_restore(&before, &after, &ports).bytes)
            })
        });
    }
    g.finish();
}

fn sim(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    g.sample_size(20).warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    let services = 1_000;
    let n = common::node(services, 10);
    let flows = common::flows(services, 1024);
    let compiled = CompiledNetfilter::new(&n.nf);
    g.throughput(Throughput::Elements(flows.len() as u64));
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
    g.bench_function(BenchmarkId::new("faithful_1k_x10", flows.len()), |b| {
        b.iter(|| {
            let mut n_ok = 0u32;
            for f in &flows {
                n_ok += u32::from(n.nf.sample(&n.env, f, &mut rng, false).is_ok_and(|o| o.dnat));
            }
            black_box(n_ok)
        })
    });
    g.bench_function(BenchmarkId::new("compiled_1k_x10", flows.len()), |b| {
        b.iter(|| {
            let mut n_ok = 0u32;
            for f in &flows {
                n_ok += u32::from(compiled.sample(&n.env, f, &mut rng).is_ok_and(|o| o.dnat));
            }
            black_box(n_ok)
        })
    });
    g.finish();
}

criterion_group!(benches, render, parse, sync, sim);
criterion_main!(benches);
