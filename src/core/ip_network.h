// Per-key network restrictions (a key record's allowed_ips): networks as the
// key file writes them and the key table stores them, client addresses as
// the request path passes them, and the match.
//
// One 128-bit space for both families: an IPv4 network a.b.c.d/n is stored
// as the IPv4-mapped IPv6 network ::ffff:a.b.c.d/(96+n), and an IPv4 client,
// or an IPv6 client whose address is IPv4-mapped (::ffff:a.b.c.d, what a
// dual-stack listener reports for an IPv4 peer), as ::ffff:a.b.c.d. So IPv4
// rules match IPv4 clients however they arrived, and the match is one
// prefix comparison. IPv6 networks shorter than /96 (::/0, 2001:db8::/32)
// never match an IPv4 client, as in nginx's allow/deny; an IPv6 network
// written in the mapped form (::ffff:203.0.113.0/120) is its IPv4 network.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace apikey {

constexpr std::size_t kMaxAllowedIps = 64;  // networks per key

// 17 bytes, alignment 1: the table stores them packed (key_table.h).
struct IpNetwork {
    std::uint8_t addr[16];  // host bits zero
    std::uint8_t bits;      // prefix length in the 128-bit space (IPv4 /n is 96 + n)

    bool is_ipv4() const noexcept;
    bool operator==(const IpNetwork &o) const noexcept;
    bool operator!=(const IpNetwork &o) const noexcept { return !(*this == o); }
};
static_assert(sizeof(IpNetwork) == 17 && alignof(IpNetwork) == 1);
static_assert(std::is_trivially_copyable_v<IpNetwork>);

enum class AddressFamily : std::uint8_t { unknown = 0, ipv4 = 4, ipv6 = 6 };

// A client's address: family and 16 bytes (IPv4 as ::ffff:a.b.c.d).
// `unknown` (a unix-domain socket nobody rewrote) matches no network.
struct ClientAddress {
    AddressFamily family = AddressFamily::unknown;
    std::uint8_t addr[16] = {};

    static ClientAddress ipv4(const void *four_bytes) noexcept;
    // An IPv4-mapped address becomes the IPv4 address it carries.
    static ClientAddress ipv6(const void *sixteen_bytes) noexcept;
};

// From a `struct sockaddr` (AF_INET, AF_INET6; anything else is unknown).
ClientAddress socket_client_address(const void *sockaddr) noexcept;

// Where the access policy gets the client's address: read only for a key
// with allowed_ips, so a request with any other key builds nothing. A
// default source reads as unknown.
struct ClientSource {
    ClientAddress (*read)(const void *context) noexcept = nullptr;
    const void *context = nullptr;

    ClientAddress get() const noexcept { return read ? read(context) : ClientAddress{}; }
};

bool network_contains(const IpNetwork &net, const ClientAddress &client) noexcept;
bool any_network_contains(const IpNetwork *nets, std::size_t count,
                          const ClientAddress &client) noexcept;

// "203.0.113.0/24", "2001:db8::/32", "198.51.100.7" (a host: /32 or /128).
// Strict: dotted-quad IPv4 without leading zeros, IPv6 as inet_pton takes it
// (no zone), a decimal prefix within the family's range, no host bits set
// (203.0.113.5/24 is refused, naming 203.0.113.0/24). False and a reason
// on anything else.
bool parse_network(std::string_view text, IpNetwork &out, std::string &error);

// The canonical text: IPv4 dotted quad, IPv6 as RFC 5952 (inet_ntop), a
// host without its prefix. parse_network reads it back as the same network.
std::string format_network(const IpNetwork &net);

}  // namespace apikey
