//! A `SyncAdaptor` queue over a `Raw` disk: one completion per request, one eventfd signal per batch.

mod common;

use blk_core::{
    AsyncIo, Completion, DiskFile, ErrorKind, IoBuf, IoBufMut, Request, RequestFlags, RequestOp,
    SyncAdaptor,
};
use common::*;

const SIZE: u64 = 1 << 20;

fn reap(queue: &mut dyn blk_core::AsyncIo) -> Vec<Completion> {
    // One batch, one signal.
    assert_eq!(queue.notifier().read().unwrap(), 1);
    let mut done = Vec::new();
    while let Some(c) = queue.next_completed_request() {
        done.push(c);
    }
    done
}

#[test]
fn a_batch_completes_every_request() {
    let dir = tempdir();
    let path = new_image(dir.path(), "q.img", SIZE);
    let disk = open_disk(&path, rw()).unwrap();
    let background = pattern(9, 256 << 10);
    disk.write_all_at(0, &background).unwrap();
    let mut queue = SyncAdaptor::new(disk.try_clone().unwrap(), 16).unwrap();

    let write_a = vec![0x11u8; 4096];
    let write_b = pattern(10, 700);
    let mut read_all_buf = vec![0u8; 200 << 10];
    let mut read_b = vec![0u8; 700];
    let mut read_oob = vec![0u8; 20];
    {
        // SAFETY: the vectors live until the end of the test, after every request of the batch completed (the
        // queue runs the batch inside `submit`); they are not touched through references until then, and are
        // not resized.
        let (a, b, all, rb, oob) = unsafe {
            (
                IoBuf::from_raw_parts(write_a.as_ptr(), write_a.len()),
                IoBuf::from_raw_parts(write_b.as_ptr(), write_b.len()),
                IoBufMut::from_raw_parts(read_all_buf.as_mut_ptr(), read_all_buf.len()),
                IoBufMut::from_raw_parts(read_b.as_mut_ptr(), read_b.len()),
                IoBufMut::from_raw_parts(read_oob.as_mut_ptr(), read_oob.len()),
            )
        };
        let (a, b, all, rb, oob) = ([a], [b], [all], [rb], [oob]);
        let batch = [
            Request::new(
                1,
                RequestOp::Write {
                    offset: 0,
                    bufs: &a,
                },
            ),
            Request::new(
                2,
                RequestOp::Write {
                    offset: 4096 + 100,
                    bufs: &b,
                },
            )
            .with_flags(RequestFlags::FUA),
            Request::new(
                3,
                RequestOp::WriteZeroes {
                    offset: 65_536,
                    len: 8192,
                },
            )
            .with_flags(RequestFlags::NO_UNMAP),
            Request::new(
                4,
                RequestOp::WriteZeroes {
                    offset: 100_000,
                    len: 5000,
                },
            ),
            Request::new(
                5,
                RequestOp::Discard {
                    offset: 131_072,
                    len: 16_384,
                },
            ),
            Request::new(6, RequestOp::Flush),
            Request::new(
                7,
                RequestOp::Read {
                    offset: 0,
                    bufs: &all,
                },
            ),
            Request::new(
                8,
                RequestOp::Read {
                    offset: SIZE - 10,
                    bufs: &oob,
                },
            ),
            Request::new(
                9,
                RequestOp::Read {
                    offset: 4096 + 100,
                    bufs: &rb,
                },
            ),
            Request::new(10, RequestOp::Flush),
        ];
        queue.submit(&batch).unwrap();
    }
    let done = reap(&mut queue);
    assert_eq!(
        done.iter().map(|c| c.user_data).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let results: Vec<_> = done
        .iter()
        .map(|c| c.result.as_ref().map(|&n| n).map_err(|e| e.kind()))
        .collect();
    assert_eq!(
        results,
        [
            Ok(4096),
            Ok(700),
            Ok(0),
            Ok(0),
            Ok(0),
            Ok(0),
            Ok(200 << 10),
            Err(ErrorKind::OutOfBounds),
            Ok(700),
            Ok(0),
        ]
    );
    let err = done[7].result.as_ref().unwrap_err();
    assert_eq!(err.offset(), Some(SIZE - 10));
    assert_eq!(err.path(), Some(path.as_path()));
    assert!(queue.next_completed_request().is_none());

    let mut model = background;
    model[..4096].fill(0x11);
    model[4196..4896].copy_from_slice(&write_b);
    model[65_536..73_728].fill(0);
    model[100_000..105_000].fill(0);
    model[131_072..147_456].fill(0);
    assert!(read_all_buf == model[..200 << 10]);
    assert_eq!(read_b, write_b);
    assert_eq!(read_oob, [0; 20]);
    assert!(read_all(&disk)[..256 << 10] == model[..]);

    // The next batch signals again, once.
    queue.submit(&[Request::new(11, RequestOp::Flush)]).unwrap();
    let done = reap(&mut queue);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].user_data, 11);
    assert_eq!(done[0].result.as_ref().ok(), Some(&0));
    // An empty batch completes nothing and does not signal.
    queue.submit(&[]).unwrap();
    assert!(queue.notifier().read().is_err());
}

#[test]
fn a_read_only_queue_fails_changes() {
    let dir = tempdir();
    let path = new_image(dir.path(), "q.img", SIZE);
    let disk = open_disk(&path, ro()).unwrap();
    let mut queue = SyncAdaptor::new(disk.try_clone().unwrap(), 4).unwrap();
    let data = vec![1u8; 512];
    // SAFETY: `data` outlives the batch, which completes inside `submit`, and is only read.
    let buf = [unsafe { IoBuf::from_raw_parts(data.as_ptr(), data.len()) }];
    queue
        .submit(&[
            Request::new(
                1,
                RequestOp::Write {
                    offset: 0,
                    bufs: &buf,
                },
            )
            .with_flags(RequestFlags::FUA),
            Request::new(
                2,
                RequestOp::WriteZeroes {
                    offset: 0,
                    len: 512,
                },
            ),
            Request::new(
                3,
                RequestOp::Discard {
                    offset: 0,
                    len: 512,
                },
            ),
            Request::new(4, RequestOp::Flush),
        ])
        .unwrap();
    let done = reap(&mut queue);
    let kinds: Vec<_> = done
        .iter()
        .map(|c| {
            (
                c.user_data,
                c.result.as_ref().map_err(|e| e.kind()).copied(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, Err(ErrorKind::ReadOnly)),
            (2, Err(ErrorKind::ReadOnly)),
            (3, Err(ErrorKind::ReadOnly)),
            (4, Ok(0)),
        ]
    );
    assert_eq!(read_all(&disk), vec![0; SIZE as usize]);
}
