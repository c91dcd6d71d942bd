//! Any bytes as a virtio-blk request (descriptor chain and guest memory): the parser must never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| blk_fuzz::vhost_user_blk_request::vhost_user_blk_request(data)
);
