//! [`blk_uring::BACKEND`], what the factory registers: its name, and its probe honouring
//! `BLK_DISABLE_IO_URING` (a test binary of its own, as it sets the process's environment).

use blk_core::ErrorKind;

#[test]
fn the_probe_works_or_says_why_and_honours_the_environment_variable() {
    let descriptor = blk_uring::BACKEND;
    assert_eq!(descriptor.name(), "io_uring");
    assert!(descriptor.aliases().is_empty());
    assert_eq!(blk_uring::DISABLE_IO_URING_ENV, "BLK_DISABLE_IO_URING");
    if std::env::var_os(blk_uring::DISABLE_IO_URING_ENV).is_none() {
        match descriptor.probe() {
            Ok(backend) => assert_eq!(backend.name(), "io_uring"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unsupported);
                assert!(
                    e.to_string().starts_with("io_uring is not available: "),
                    "{e}"
                );
            }
        }
    }
    std::env::set_var(blk_uring::DISABLE_IO_URING_ENV, "1");
    let err = descriptor.probe().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert_eq!(
        err.to_string(),
        "io_uring is not available: disabled by BLK_DISABLE_IO_URING"
    );
}
