#include "ip_network.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstring>

#include "quoted.h"

namespace apikey {

namespace {

constexpr std::uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool is_mapped(const std::uint8_t (&addr)[16]) noexcept {
    return std::memcmp(addr, kMappedPrefix, sizeof kMappedPrefix) == 0;
}

// Whether the first `bits` bits of a and b agree.
bool same_prefix(const std::uint8_t *a, const std::uint8_t *b, unsigned bits) noexcept {
    const unsigned whole = bits / 8;
    if (std::memcmp(a, b, whole) != 0) return false;
    const unsigned rest = bits % 8;
    if (rest == 0) return true;
    const auto mask = static_cast<std::uint8_t>(0xff00u >> rest);
    return ((a[whole] ^ b[whole]) & mask) == 0;
}

bool host_bits_zero(const std::uint8_t (&addr)[16], unsigned bits) noexcept {
    for (unsigned i = bits; i < 128; i++) {
        if (addr[i / 8] >> (7 - i % 8) & 1) return false;
    }
    return true;
}

void clear_host_bits(std::uint8_t (&addr)[16], unsigned bits) noexcept {
    for (unsigned i = bits; i < 128; i++) {
        addr[i / 8] = static_cast<std::uint8_t>(addr[i / 8] & ~(1u << (7 - i % 8)));
    }
}

}  // namespace

bool IpNetwork::is_ipv4() const noexcept { return bits >= 96 && is_mapped(addr); }

bool IpNetwork::operator==(const IpNetwork &o) const noexcept {
    return bits == o.bits && std::memcmp(addr, o.addr, sizeof addr) == 0;
}

ClientAddress ClientAddress::ipv4(const void *four_bytes) noexcept {
    ClientAddress c;
    c.family = AddressFamily::ipv4;
    std::memcpy(c.addr, kMappedPrefix, sizeof kMappedPrefix);
    std::memcpy(c.addr + 12, four_bytes, 4);
    return c;
}

ClientAddress ClientAddress::ipv6(const void *sixteen_bytes) noexcept {
    ClientAddress c;
    std::memcpy(c.addr, sixteen_bytes, sizeof c.addr);
    c.family = is_mapped(c.addr) ? AddressFamily::ipv4 : AddressFamily::ipv6;
    return c;
}

ClientAddress socket_client_address(const void *sockaddr) noexcept {
    if (sockaddr == nullptr) return {};
    sa_family_t family;
    std::memcpy(&family,
                static_cast<const unsigned char *>(sockaddr) + offsetof(sockaddr_in, sin_family),
                sizeof family);
    if (family == AF_INET) {
        return ClientAddress::ipv4(static_cast<const unsigned char *>(sockaddr) +
                                   offsetof(sockaddr_in, sin_addr));
    }
    if (family == AF_INET6) {
        return ClientAddress::ipv6(static_cast<const unsigned char *>(sockaddr) +
                                   offsetof(sockaddr_in6, sin6_addr));
    }
    return {};
}

bool network_contains(const IpNetwork &net, const ClientAddress &client) noexcept {
    // An IPv4 client only meets IPv4 networks (the only ones of /96 and
    // longer whose prefix is the mapped one); an IPv6 client cannot fall
    // into the mapped range, so the prefix alone keeps it out of them.
    if (client.family == AddressFamily::ipv4 ? net.bits < 96
                                             : client.family != AddressFamily::ipv6) {
        return false;
    }
    return same_prefix(net.addr, client.addr, net.bits);
}

bool any_network_contains(const IpNetwork *nets, std::size_t count,
                          const ClientAddress &client) noexcept {
    for (std::size_t i = 0; i < count; i++) {
        if (network_contains(nets[i], client)) return true;
    }
    return false;
}

bool parse_network(std::string_view text, IpNetwork &out, std::string &error) {
    const std::size_t slash = text.find('/');
    const std::string_view address = text.substr(0, slash);
    const bool v6 = address.find(':') != std::string_view::npos;
    const unsigned max_bits = v6 ? 128 : 32;
    auto fail = [&](const std::string &why) {
        error = "invalid network " + quoted(text.substr(0, 64)) + ": " + why;
        return false;
    };

    unsigned bits = max_bits;
    if (slash != std::string_view::npos) {
        const std::string_view digits = text.substr(slash + 1);
        bool ok = !digits.empty() && digits.size() <= 3 && (digits.size() == 1 || digits[0] != '0');
        unsigned n = 0;
        for (char c : digits) {
            if (c < '0' || c > '9') ok = false;
            n = n * 10 + static_cast<unsigned>(c - '0');
        }
        if (!ok || n > max_bits) {
            return fail(std::string("the prefix length must be a number from 0 to ") +
                        (v6 ? "128 for IPv6" : "32 for IPv4"));
        }
        bits = n;
    }

    // inet_pton: IPv4 as exactly four decimal parts without leading zeros,
    // IPv6 in any RFC 4291 form (no zone index). It needs a C string.
    char buf[INET6_ADDRSTRLEN];
    if (address.empty() || address.size() >= sizeof buf) {
        return fail(v6 ? "not an IPv6 address" : "not an IPv4 address (e.g. 203.0.113.0/24)");
    }
    std::memcpy(buf, address.data(), address.size());
    buf[address.size()] = '\0';

    IpNetwork net{};
    if (v6) {
        if (inet_pton(AF_INET6, buf, net.addr) != 1) return fail("not an IPv6 address");
        net.bits = static_cast<std::uint8_t>(bits);
    } else {
        std::memcpy(net.addr, kMappedPrefix, sizeof kMappedPrefix);
        if (inet_pton(AF_INET, buf, net.addr + 12) != 1) {
            return fail("not an IPv4 address (e.g. 203.0.113.0/24)");
        }
        net.bits = static_cast<std::uint8_t>(96 + bits);
    }
    // An IPv6 network in the mapped range but shorter than /96 also covers
    // addresses outside it: it stays an IPv6 network (is_ipv4() is false).
    if (!host_bits_zero(net.addr, net.bits)) {
        IpNetwork masked = net;
        clear_host_bits(masked.addr, masked.bits);
        return fail("host bits are set (the network is " + format_network(masked) + ")");
    }
    out = net;
    return true;
}

std::string format_network(const IpNetwork &net) {
    char buf[INET6_ADDRSTRLEN];
    const bool v4 = net.is_ipv4();
    if (v4) {
        inet_ntop(AF_INET, net.addr + 12, buf, sizeof buf);
    } else {
        inet_ntop(AF_INET6, net.addr, buf, sizeof buf);
    }
    std::string out(buf);
    const unsigned bits = v4 ? net.bits - 96u : net.bits;
    if (net.bits != 128) out += "/" + std::to_string(bits);
    return out;
}

}  // namespace apikey
