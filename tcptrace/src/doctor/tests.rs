//! Tests of doctor's verdicts and report, from hand-made findings.

use super::*;

const ALL: u64 = (1 << 41) - 1;

fn settings(keepalive_time: i64) -> Settings {
    crate::host::sysctls::with_defaults(&[("net.ipv4.tcp_keepalive_time", keepalive_time)])
}

/// A host where everything works, with the kernel's default settings
/// (whose notes must not change the verdict).
fn healthy() -> Findings {
    Findings {
        kernel_release: Some("6.18.44-fc-v595".to_owned()),
        btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
        btf: Ok(BtfFacts {
            send_reset_has_reason: true,
            reset_reason_names: 29,
        }),
        capabilities: Some(Capabilities(ALL)),
        kernel_addresses: Ok(true),
        hooks: Ok(HOOKS.iter().map(|hook| (hook, None)).collect()),
        tick_rate: Ok(250),
        tracefs: Vec::new(),
        namespaces: vec![
            NamespaceFacts {
                inode: 4_026_531_833,
                host: true,
                holder: "tcptrace's own".to_owned(),
                contents: Ok(NamespaceContents {
                    tcp_sockets: 3,
                    settings: settings(7200),
                    busiest_destination: None,
                    own_keepalive_over: Some((0, 0)),
                }),
            },
            NamespaceFacts {
                inode: 4_026_532_290,
                host: false,
                holder: "nginx, pid 812".to_owned(),
                contents: Ok(NamespaceContents {
                    tcp_sockets: 1,
                    settings: settings(300),
                    busiest_destination: Some(("10.0.0.5:5432".parse().expect("address"), 3)),
                    own_keepalive_over: None,
                }),
            },
        ],
        namespaces_without_sockets: 2,
        emulated_cpus: None,
        containers: containers::Found {
            docker_socket: None,
            podman_socket: Some(PathBuf::from("/run/podman/podman.sock")),
            pods_dir: Some((PathBuf::from("/var/log/pods"), 4)),
        },
    }
}

fn without_hook(program: &str) -> Findings {
    let mut findings = healthy();
    findings.hooks = Ok(HOOKS
        .iter()
        .map(|hook| {
            let error = (hook.program == program).then(|| "Permission denied".to_owned());
            (hook, error)
        })
        .collect());
    findings
}

fn text(report: &Report) -> String {
    let mut out = Vec::new();
    report.write_text(&mut out).expect("write to memory");
    String::from_utf8(out).expect("UTF-8")
}

fn without_capability(capability: u32) -> Findings {
    let mut findings = healthy();
    findings.capabilities = Some(Capabilities(ALL & !(1 << capability)));
    findings
}

#[test]
fn a_healthy_host_is_ready_despite_setting_notes() {
    let report = assess(&healthy());
    assert_eq!(report.verdict, Verdict::Ready);
    assert_eq!(report.exit_code, 0);
    assert!(
        report.namespaces[0]
            .notes
            .iter()
            .any(|n| n.setting == "net.ipv4.tcp_keepalive_time")
    );
    // A missing tracefs and an old-looking kernel are notes too.
    assert_eq!(report.tracefs.status, Status::Note);
    assert!(report.tracefs.detail.contains("tcptrace mounts it"));
    let mut findings = healthy();
    findings.kernel_release = Some("5.10.0".to_owned());
    assert_eq!(assess(&findings).kernel.status, Status::Note);
    assert_eq!(assess(&findings).verdict, Verdict::Ready);
}

#[test]
fn qemu_tcg_cpus_get_a_note() {
    // The first CPU of the 2-vCPU guest's /proc/cpuinfo (QEMU TCG,
    // `-cpu max`); the second differs only in its numbers.
    let cpu = |n: usize| {
        format!(
            "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 15\nmodel\t\t: 107\nmodel name\t: QEMU TCG CPU version 2.5+\nstepping\t: 1\n\n"
        )
    };
    let guest = cpu(0) + &cpu(1);
    assert_eq!(emulated_cpus(&guest), Some(2));
    assert_eq!(emulated_cpus(&cpu(0)), Some(1));
    let kvm = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\n";
    assert_eq!(emulated_cpus(kvm), None);
    assert_eq!(emulated_cpus(""), None);

    let mut findings = healthy();
    findings.emulated_cpus = emulated_cpus(&guest);
    let report = assess(&findings);
    assert_eq!(report.verdict, Verdict::Ready);
    let text = text(&report);
    assert!(text.contains("\nnote 2 CPUs emulated by QEMU (TCG): under multi-threaded TCG"));
    assert!(text.contains("thread=single"));
    // One vCPU cannot run code another has patched.
    findings.emulated_cpus = Some(1);
    assert!(assess(&findings).emulator.is_none());
    assert!(assess(&healthy()).emulator.is_none());
}

#[test]
fn an_optional_hook_missing_degrades() {
    let report = assess(&without_hook("timer_expire_exit"));
    assert_eq!(report.verdict, Verdict::Degraded);
    assert_eq!(report.exit_code, 1);
    let hook = report
        .hooks
        .iter()
        .find(|h| h.program == "timer_expire_exit")
        .expect("listed");
    assert_eq!(
        (hook.status, hook.attached, hook.without),
        (
            Status::Warn,
            false,
            Some("keepalive probes are not counted")
        )
    );
    assert!(text(&report).contains(
        "warn timer_expire_exit: not attached: Permission denied; without it: keepalive probes are not counted\n"
    ));
}

#[test]
fn unknown_reset_reasons_degrade() {
    let mut findings = healthy();
    findings.btf = Ok(BtfFacts {
        send_reset_has_reason: false,
        reset_reason_names: 0,
    });
    let report = assess(&findings);
    assert_eq!(report.verdict, Verdict::Degraded);
    assert!(text(&report).contains(
        "warn reset reasons: tcp_send_reset has no reason argument on this kernel (it arrived in Linux 6.10); without it: resets sent count with reason=\"unknown\"\n"
    ));
}

#[test]
fn an_unreadable_namespace_degrades() {
    let mut findings = healthy();
    findings.namespaces.push(NamespaceFacts {
        inode: 4_026_532_999,
        host: false,
        holder: "postgres, pid 4242".to_owned(),
        contents: Err(
            "network namespace /proc/4242/task/4242/ns/net: Permission denied (os error 13)"
                .to_owned(),
        ),
    });
    let report = assess(&findings);
    assert_eq!(report.verdict, Verdict::Degraded);
    let text = text(&report);
    assert!(text.contains("warn netns 4026532999 (postgres, pid 4242): cannot be entered: network namespace /proc/4242/task/4242/ns/net: Permission denied"), "{text}");
    assert!(!text.contains("TCP settings: netns 4026532999"), "{text}");
}

#[test]
fn capabilities_that_lose_a_part_degrade() {
    for capability in [CAP_SYS_ADMIN, CAP_SYS_PTRACE] {
        let findings = without_capability(capability);
        assert_eq!(
            assess(&findings).verdict,
            Verdict::Degraded,
            "capability {capability}"
        );
    }
    let mut hidden = without_capability(CAP_SYSLOG);
    hidden.kernel_addresses = Ok(false);
    assert_eq!(assess(&hidden).verdict, Verdict::Degraded);
    // Visible addresses, or a capability tcptrace does not use: nothing lost.
    assert_eq!(
        assess(&without_capability(CAP_SYSLOG)).verdict,
        Verdict::Ready
    );
    assert_eq!(
        assess(&without_capability(CAP_DAC_READ_SEARCH)).verdict,
        Verdict::Degraded
    );
    // CAP_SYS_ADMIN alone allows loading.
    let mut admin_only = healthy();
    admin_only.capabilities = Some(Capabilities(ALL & !(1 << CAP_BPF) & !(1 << CAP_PERFMON)));
    assert_eq!(assess(&admin_only).verdict, Verdict::Ready);
}

#[test]
fn no_btf_cannot_run() {
    let mut findings = healthy();
    findings.btf_path = PathBuf::from("/nonexistent");
    findings.btf = Err("kernel BTF not found at /nonexistent".to_owned());
    findings.hooks = Err("kernel BTF not found at /nonexistent".to_owned());
    let report = assess(&findings);
    assert_eq!(report.verdict, Verdict::CannotRun);
    assert_eq!(report.exit_code, 2);
    let text = text(&report);
    assert!(
        text.contains("fail /nonexistent: kernel BTF not found at /nonexistent"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "Verdict\nfail tcptrace cannot run here: see the fail lines above (exit 2)\n\n"
        ),
        "{text}"
    );
    // Every hook is still listed, not attached.
    assert_eq!(report.hooks.len(), HOOKS.len());
    assert!(report.hooks.iter().all(|h| !h.attached));
}

#[test]
fn missing_bpf_capabilities_cannot_run() {
    let mut findings = without_capability(CAP_SYS_ADMIN);
    findings.capabilities = findings
        .capabilities
        .map(|c| Capabilities(c.0 & !(1 << CAP_BPF)));
    let report = assess(&findings);
    assert_eq!(report.verdict, Verdict::CannotRun);
    assert!(
        text(&report).contains("fail CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN): missing CAP_BPF: ")
    );
}

#[test]
fn the_state_hook_missing_cannot_run() {
    let report = assess(&without_hook("inet_sock_set_state"));
    assert_eq!(report.verdict, Verdict::CannotRun);
    assert_eq!(report.hooks[0].status, Status::Fail);
    assert_eq!(report.hooks[0].without, Some(STATE_HOOK_LOST));
}

#[test]
fn every_line_starts_with_a_mark_or_is_a_heading() {
    let mut findings = without_hook("timer_start");
    findings.hooks = Err("the kernel rejected BPF program inet_sock_set_state: Permission denied\nverifier log line 1\nline 2".to_owned());
    let text = text(&assess(&findings));
    let headings = [
        "Kernel",
        "BTF",
        "BPF hooks",
        "Capabilities",
        "tracefs",
        "Container and pod names",
        "Network namespaces",
        "TCP settings: netns",
        "Verdict",
    ];
    for line in text.lines().filter(|l| !l.is_empty()) {
        let marked = ["ok   ", "note ", "warn ", "fail "]
            .iter()
            .any(|m| line.starts_with(m));
        let heading = headings.iter().any(|h| line.starts_with(h));
        assert!(marked || heading, "{line:?}");
    }
    assert!(
        text.contains("verifier log line 1 line 2"),
        "folded: {text}"
    );
}

#[test]
fn settings_show_once_each_with_their_notes() {
    let report = assess(&healthy());
    let text = text(&report);
    assert!(text.contains(
        "Network namespaces\n\
         ok   tcptrace's own and 1 other with TCP sockets: settings below; 2 without TCP sockets, not shown\n"
    ), "{text}");
    assert!(text.contains(
        "TCP settings: netns host (inode 4026531833, tcptrace's own), 3 TCP sockets\n\
         ok   tcp_keepalive_intvl=75 tcp_keepalive_probes=9 tcp_tw_reuse=2 tcp_max_tw_buckets=131072\n\
         note tcp_keepalive_time=7200: "
    ), "{text}");
    assert!(
        text.contains("note ip_local_port_range=32768-60999: 28232 local ports for"),
        "{text}"
    );
    assert!(
        text.contains(
            "TCP settings: netns 4026532290 (nginx, pid 812), 1 TCP socket\n\
         ok   tcp_keepalive_time=300 "
        ),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("serializable");
    assert_eq!(
        json["namespaces"][1]["settings"]["net.ipv4.tcp_keepalive_time"],
        300
    );
    assert_eq!(json["verdict"], "ready");
}

#[test]
fn hooks_need_no_newer_kernel_than_named() {
    assert!(older(
        Some(KernelVersion::new(5, 10)),
        KernelVersion::new(5, 12)
    ));
    assert!(!older(
        Some(KernelVersion::new(6, 1)),
        KernelVersion::new(5, 12)
    ));
    assert!(!older(None, KernelVersion::new(5, 12)));
}

#[test]
fn a_destination_holding_most_local_ports_is_a_warning() {
    let mut findings = healthy();
    let contents = findings.namespaces[1].contents.as_mut().expect("read");
    // The fixture's range is the kernel's default: 28,232 ports.
    contents.busiest_destination = Some(("10.0.0.5:5432".parse().expect("address"), 14_117));
    let report = assess(&findings);
    let namespace = &report.namespaces[1];
    assert_eq!(namespace.status, Status::Warn);
    let note = namespace
        .notes
        .iter()
        .find(|note| note.text.contains("are held by connections to"))
        .expect("a headroom note");
    assert!(
        note.text.starts_with(
            "14117 of the 28232 local ports (50%) are held by connections to 10.0.0.5:5432"
        ),
        "{}",
        note.text
    );
    // Half of them exactly is not more than half.
    let contents = findings.namespaces[1].contents.as_mut().expect("read");
    contents.busiest_destination = Some(("10.0.0.5:5432".parse().expect("address"), 14_116));
    assert_eq!(assess(&findings).namespaces[1].status, Status::Ok);
}

/// Each source of names: found, or a note of what is shown without it;
/// neither changes the verdict.
#[test]
fn container_sources_are_reported_and_never_degrade() {
    let report = assess(&healthy());
    assert_eq!(report.verdict, Verdict::Ready);
    let text = text(&report);
    assert!(
        text.contains("note docker: no API answers on the socket (--containers.docker-socket): its containers are shown by id only"),
        "{text}"
    );
    assert!(
        text.contains("ok   podman: API answers on /run/podman/podman.sock"),
        "{text}"
    );
    assert!(
        text.contains("ok   kubelet pods: /var/log/pods holds 4 pods"),
        "{text}"
    );
}
