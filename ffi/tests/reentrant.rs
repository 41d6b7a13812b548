//! recvanon's callback may use the socket it is called on: reply to the message it holds,
//! send another, read the last error, even close the socket; against a local network of
//! real nodes, through the C ABI.

#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::ffi::{CString, c_void};
use std::time::{Duration, Instant};

use mixed::*;
use node::IoChoice;
use node::demo::{LocalNetwork, LocalOptions};

/// What the callbacks see and do.
struct State {
    socket: *mut MixedSocket,
    /// Where the callback sends its new message.
    peer: [u8; 32],
    /// Codes of the calls made from inside the callback.
    codes: Vec<i32>,
    /// Messages seen: (data, in_reply_to).
    seen: Vec<(Vec<u8>, Option<[u8; 16]>)>,
    /// Reply and send from the callback to the first message with a handle.
    answer: bool,
    /// Close the socket from the callback once this many messages were seen.
    close_after: usize,
    closed: bool,
}

unsafe extern "C" fn on_event(ev: *const MixedEvent, user: *mut c_void) -> i32 {
    // SAFETY: recvanon passes a valid event and our `user`
    let (ev, st) = unsafe { (&*ev, &mut *(user as *mut State)) };
    if ev.kind != MIXED_EVENT_MESSAGE {
        return 0;
    }
    // SAFETY: valid during the callback
    let data = unsafe { std::slice::from_raw_parts(ev.data, ev.data_len) }.to_vec();
    st.seen
        .push((data, (ev.has_in_reply_to != 0).then_some(ev.in_reply_to)));
    if st.answer && ev.handle_len > 0 {
        st.answer = false;
        let mut id = [0u8; 16];
        // SAFETY: the socket recvanon runs on; the handle is valid during the callback
        let code = unsafe {
            mixed_reply(
                st.socket,
                ev.handle,
                ev.handle_len,
                3,
                b"pong".as_ptr(),
                4,
                id.as_mut_ptr(),
            )
        };
        st.codes.push(code);
        let params = MixedSendParams {
            port: 3,
            ..MixedSendParams::default()
        };
        let more = b"and one more";
        // SAFETY: as above; every pointer is valid
        let code = unsafe {
            mixed_sendanon(
                st.socket,
                st.peer.as_ptr(),
                more.as_ptr(),
                more.len(),
                &params,
                id.as_mut_ptr(),
            )
        };
        st.codes.push(code);
        // SAFETY: the socket is open
        let _ = unsafe { mixed_last_error(st.socket) };
        return 1;
    }
    if st.close_after > 0 && st.seen.len() >= st.close_after {
        // SAFETY: closing from inside the callback is deferred until recvanon returns
        st.codes.push(unsafe { mixed_closeanon(st.socket) });
        st.closed = true;
    }
    0
}

fn open(path: &std::path::Path, port: i32) -> *mut MixedSocket {
    let path = CString::new(path.to_str().unwrap()).unwrap();
    let mut s = std::ptr::null_mut();
    // SAFETY: valid C string and out pointer
    assert_eq!(
        unsafe { mixed_socketanon(path.as_ptr(), port, &mut s) },
        MIXED_OK
    );
    s
}

fn node_id(s: *mut MixedSocket) -> [u8; 32] {
    let mut id = [0u8; 32];
    // SAFETY: open socket, 32 writable bytes
    assert_eq!(unsafe { mixed_node_id(s, id.as_mut_ptr()) }, MIXED_OK);
    id
}

/// recvanon on `st.socket` until `done` or 60 s.
fn receive_until(st: &mut State, done: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(st) && !st.closed && Instant::now() < deadline {
        let user = st as *mut State as *mut c_void;
        // SAFETY: open socket (or closed from the callback, after which we stop), valid
        // callback and user
        let code = unsafe { mixed_recvanon(st.socket, Some(on_event), user, 500) };
        assert!(
            code == MIXED_OK || code == MIXED_TIMEOUT,
            "recvanon: {code}"
        );
    }
    assert!(done(st), "timed out; seen {:?}", st.seen);
}

#[test]
fn a_callback_replies_sends_and_closes_on_its_own_socket() {
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 5,
        epoch_seconds: 4,
        bandwidth: 200.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(5),
        loop_rate: 1.0,
    })
    .unwrap();
    let a = open(net.nodes[1].api_socket().unwrap(), 3);
    let b = open(net.nodes[2].api_socket().unwrap(), 5);
    let (a_id, b_id) = (node_id(a), node_id(b));

    // a asks b, with SURBs to answer through
    let params = MixedSendParams {
        port: 5,
        reply_surbs: 4,
        ..MixedSendParams::default()
    };
    let mut first = [0u8; 16];
    let ping = b"ping";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: open socket, valid pointers
        let code = unsafe {
            mixed_sendanon(
                a,
                b_id.as_ptr(),
                ping.as_ptr(),
                4,
                &params,
                first.as_mut_ptr(),
            )
        };
        if code == MIXED_OK {
            break;
        }
        assert_eq!(code, MIXED_NO_CONSENSUS, "sendanon");
        assert!(Instant::now() < deadline, "no consensus in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // b answers from inside its callback, on the socket the callback runs on
    let mut at_b = State {
        socket: b,
        peer: a_id,
        codes: Vec::new(),
        seen: Vec::new(),
        answer: true,
        close_after: 0,
        closed: false,
    };
    receive_until(&mut at_b, |st| !st.answer);
    assert_eq!(at_b.seen[0].0, b"ping");
    assert_eq!(
        at_b.codes,
        vec![MIXED_OK, MIXED_OK],
        "reply and send from the callback"
    );

    // a gets both, then closes its socket from inside the callback
    let mut at_a = State {
        socket: a,
        peer: b_id,
        codes: Vec::new(),
        seen: Vec::new(),
        answer: false,
        close_after: 2,
        closed: false,
    };
    receive_until(&mut at_a, |st| st.seen.len() >= 2);
    assert!(at_a.closed);
    assert_eq!(at_a.codes, vec![MIXED_OK], "closeanon from the callback");
    assert!(
        at_a.seen.contains(&(b"pong".to_vec(), Some(first))),
        "the reply, answering the first message: {:?}",
        at_a.seen
    );
    assert!(at_a.seen.iter().any(|(d, _)| d == b"and one more"));
    // SAFETY: b is open
    assert_eq!(unsafe { mixed_closeanon(b) }, MIXED_OK);
}
