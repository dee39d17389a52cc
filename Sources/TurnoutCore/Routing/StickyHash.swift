/// Maps a sticky cohort key to a bucket in [0, 10000). Stable across processes and versions:
/// FNV-1a over the UTF-8 bytes followed by a 64-bit avalanche finaliser, so similar keys spread.
public enum StickyHash {
    public static let bucketCount = 10_000

    public static func bucket(_ key: String) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key.utf8 {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01B3
        }
        h ^= h >> 33
        h &*= 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h &*= 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return Int(h % UInt64(bucketCount))
    }
}
