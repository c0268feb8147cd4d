//! The primary's shipper against the appliance's receiver logic, over real
//! TCP on loopback: epochs committed, read back, resumed after a reconnect,
//! and a foreign key refused. (In the lab the receiver runs in the appliance.)

use resilire_receiver::{vm_id_of, Receiver, ReceiverConfig, VmKey};
use resilire_shim::ship::{Shipper, VmIdentity};
use resilire_store::{HeapFrames, Store};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const KEY: [u8; 32] = [7; 32];

type Rx = Arc<Mutex<Receiver<HeapFrames>>>;

/// Serves connections on an ephemeral port, one thread each, into one receiver.
fn serve() -> (String, Rx) {
    let store = Store::new(HeapFrames::new(), 64 << 20);
    let keys = [VmKey {
        name: "vm1".into(),
        key: KEY,
    }];
    let rx = Arc::new(Mutex::new(
        Receiver::new(store, &keys, ReceiverConfig::default()).expect("receiver"),
    ));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let shared = rx.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        for conn in l.incoming() {
            let mut sock = conn.unwrap();
            let rx = shared.clone();
            std::thread::spawn(move || {
                let now = || t0.elapsed().as_millis() as u64;
                let id = rx.lock().unwrap().accept(now());
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut out = Vec::new();
                    let r = rx.lock().unwrap().on_bytes(id, &buf[..n], now(), &mut out);
                    if sock.write_all(&out).is_err() || r.is_err() {
                        break;
                    }
                }
                rx.lock().unwrap().on_close(id);
            });
        }
    });
    (addr, rx)
}

fn vm(pages: u64) -> VmIdentity {
    VmIdentity {
        vm_id: vm_id_of("vm1"),
        uuid: [1; 16],
        name: "vm1".into(),
        pages,
        xl_config: "name = \"vm1\"\n".into(),
    }
}

/// A deterministic image sequence: each epoch rewrites some pages.
fn mutate(img: &mut [u8], epoch: u64) -> Vec<u64> {
    let pages = img.len() / PAGE;
    let mut dirty = Vec::new();
    for p in 0..pages {
        if (p as u64 * 2654435761 + epoch * 97).is_multiple_of(7) {
            for (i, b) in img[p * PAGE..p * PAGE + 512].iter_mut().enumerate() {
                *b = (epoch as u8).wrapping_mul(31).wrapping_add(i as u8);
            }
            dirty.push(p as u64);
        }
    }
    dirty
}

fn read_all(sh: &mut Shipper, pages: u64) -> Vec<u8> {
    sh.read_image(pages, 256).unwrap()
}

#[test]
fn epochs_commit_read_back_and_resume_after_reconnect() {
    let (addr, rx) = serve();
    let pages = 300u64;
    let mut img = vec![0u8; pages as usize * PAGE];
    let mut sh = Shipper::connect(&addr, &vm(pages), KEY, 64, Duration::from_secs(10)).unwrap();
    assert_eq!(sh.welcome.committed_epoch, None);
    for epoch in 1..=5 {
        let dirty = mutate(&mut img, epoch);
        assert_eq!(sh.next_epoch(), epoch);
        sh.send_epoch(&img, &dirty).unwrap();
        sh.wait_ack().unwrap();
    }
    assert_eq!(read_all(&mut sh, pages), img);
    drop(sh); // connection cut without BYE

    // A new primary process (no shadow) resumes after the committed epoch
    // with a full synchronisation.
    let mut sh = Shipper::connect(&addr, &vm(pages), KEY, 64, Duration::from_secs(10)).unwrap();
    assert_eq!(sh.welcome.committed_epoch, Some(5));
    mutate(&mut img, 6);
    let all: Vec<u64> = (0..pages).collect();
    sh.send_epoch(&img, &all).unwrap();
    sh.wait_ack().unwrap();
    assert_eq!(read_all(&mut sh, pages), img);
    sh.close().unwrap();
    let st = rx
        .lock()
        .unwrap()
        .vm_status(vm_id_of("vm1"))
        .map(|s| s.committed_epoch);
    assert_eq!(st, Some(Some(6)));
}

#[test]
fn a_primary_with_another_key_is_refused() {
    let (addr, _rx) = serve();
    let err = Shipper::connect(&addr, &vm(16), [9; 32], 64, Duration::from_secs(10))
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("closed") || text.contains("refused") || text.contains("reading"),
        "{text}"
    );
}

#[test]
fn an_epoch_sent_in_rounds_commits_the_last_content() {
    // The initial synchronisation: live pre-copy rounds go into epoch 1's
    // staging, the final round overwrites pages sent earlier, then COMMIT.
    let (addr, _rx) = serve();
    let pages = 200u64;
    let mut img = vec![0u8; pages as usize * PAGE];
    mutate(&mut img, 1);
    let mut sh = Shipper::connect(&addr, &vm(pages), KEY, 64, Duration::from_secs(10)).unwrap();
    let all: Vec<u64> = (0..pages).collect();
    sh.send_pages(&img, &all).unwrap();
    let dirty = mutate(&mut img, 2);
    sh.send_pages(&img, &dirty).unwrap();
    let st = sh.commit().unwrap();
    assert!(st.chunks >= 2, "{st:?}");
    sh.wait_ack().unwrap();
    assert_eq!(read_all(&mut sh, pages), img);
}
