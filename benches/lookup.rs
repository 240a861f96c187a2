//! `lookup`: the cost of one new flow's lookup as Services and endpoints grow — the faithful
//! rule-by-rule walk and the compiled evaluator (iptables), the IPVS service lookup and each
//! IPVS scheduler.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use svcpath::dataplane::ipvs::{DestSpec, IpvsService, SchedulerKind, ServiceFlags};
use svcpath::dataplane::netfilter::compiled::CompiledNetfilter;
use svcpath::study::synthetic;

/// Flows cycled through per measurement (spread over the Services).
const FLOWS: usize = 64;

fn services_sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.sample_size(20).warm_up_time(Duration::from_millis(500));
    for services in [10usize, 1_000, 10_000, 100_000] {
        let n = common::node(services, 10);
        let flows = common::flows(services, FLOWS);
        let compiled = CompiledNetfilter::new(&n.nf);
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(if services >= 10_000 { 4 } else { 2 }));
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("iptables_faithful", services), &services, |b, _| {
            b.iter(|| {
                k = (k + 1) % FLOWS;
                black_box(
                    n.nf.sample(&n.env, &flows[k], &mut rng, false).map(|o| o.rules_evaluated),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("iptables_compiled", services), &services, |b, _| {
            b.iter(|| {
                k = (k + 1) % FLOWS;
                black_box(compiled.sample(&n.env, &flows[k], &mut rng).map(|o| o.rules_evaluated))
            })
        });
        // The IPVS service table: one hash lookup by (protocol, address, port), then rr.
        let mut table: HashMap<(u8, IpAddr, u16), IpvsService> = HashMap::new();
        for i in 0..services {
            let vip = SocketAddr::new(synthetic::service_ip(i), 80);
            let dests: Vec<DestSpec> = (0..10)
                .map(|j| DestSpec::new(SocketAddr::new(synthetic::pod_ip(i, j, 10), 8080), 1))
                .collect();
            if let Ok(svc) =
                IpvsService::from_dests(vip, SchedulerKind::Rr, ServiceFlags::NONE, &dests)
            {
                table.insert((6, vip.ip(), 80), svc);
            }
        }
        let client: SocketAddr = "10.255.255.254:40000".parse().expect("literal address");
        g.bench_with_input(BenchmarkId::new("ipvs_lookup_rr", services), &services, |b, _| {
            b.iter(|| {
                k = (k + 1) % FLOWS;
                let key = (6u8, flows[k].dst, 80u16);
                black_box(table.get_mut(&key).and_then(|s| s.schedule(client)).map(|d| d.addr))
            })
        });
    }
    g.finish();
}

fn endpoints_sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.sample_size(20).warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for endpoints in [1usize, 10, 100, 1_000] {
        let services = 100;
        let n = common::node(services, endpoints);
        let flows = common::flows(services, FLOWS);
        let compiled = CompiledNetfilter::new(&n.nf);
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(2);
        let mut k = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("iptables_faithful_endpoints", endpoints),
            &endpoints,
            |b, _| {
                b.iter(|| {
                    k = (k + 1) % FLOWS;
                    black_box(n.nf.sample(&n.env, &flows[k], &mut rng, false).map(|o| o.dst))
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("iptables_compiled_endpoints", endpoints),
            &endpoints,
            |b, _| {
                b.iter(|| {
                    k = (k + 1) % FLOWS;
                    black_box(compiled.sample(&n.env, &flows[k], &mut rng).map(|o| o.dst))
                })
            },
        );
        for kind in SchedulerKind::all() {
            let vip: SocketAddr = "10.96.0.1:80".parse().expect("literal address");
            let dests: Vec<DestSpec> = (0..endpoints)
                .map(|j| {
                    DestSpec::new(
                        SocketAddr::new(synthetic::pod_ip(0, j, endpoints), 8080),
                        1 + (j % 3) as u32,
                    )
                })
                .collect();
            let Ok(mut svc) = IpvsService::from_dests(vip, *kind, ServiceFlags::NONE, &dests)
            else {
                continue;
            };
            let mut port = 0u16;
            g.bench_with_input(
                BenchmarkId::new(format!("ipvs_sched_{}", kind.name()), endpoints),
                &endpoints,
                |b, _| {
                    b.iter(|| {
                        port = port.wrapping_add(1);
                        let client =
                            SocketAddr::new([10, 200, (port >> 8) as u8, port as u8].into(), 40000);
                        black_box(svc.schedule(client).map(|d| d.addr))
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, services_sweep, endpoints_sweep);
criterion_main!(benches);
