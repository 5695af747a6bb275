// allowed_ips networks: strict parsing, canonical text, and the match of a
// client address (IPv4, IPv6, IPv4-mapped IPv6) against them.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/ip_network.h"

namespace apikey {
namespace {

IpNetwork net(const std::string &text) {
    IpNetwork n{};
    std::string error;
    EXPECT_TRUE(parse_network(text, n, error)) << text << ": " << error;
    return n;
}

// The reason parse_network gives, or "" when it accepts.
std::string refusal(const std::string &text) {
    IpNetwork n{};
    std::string error;
    if (parse_network(text, n, error)) return "";
    EXPECT_FALSE(error.empty()) << text;
    return error;
}

ClientAddress v4(const char *text) {
    in_addr a{};
    EXPECT_EQ(inet_pton(AF_INET, text, &a), 1) << text;
    return ClientAddress::ipv4(&a);
}

ClientAddress v6(const char *text) {
    in6_addr a{};
    EXPECT_EQ(inet_pton(AF_INET6, text, &a), 1) << text;
    return ClientAddress::ipv6(&a);
}

bool in(const std::string &network, const ClientAddress &client) {
    return network_contains(net(network), client);
}

// ---- parsing and canonical text

TEST(ParseNetwork, CanonicalTextRoundTrips) {
    const std::pair<const char *, const char *> cases[] = {
        {"203.0.113.0/24", "203.0.113.0/24"},
        {"198.51.100.7", "198.51.100.7"},
        {"198.51.100.7/32", "198.51.100.7"},
        {"0.0.0.0/0", "0.0.0.0/0"},
        {"10.0.0.0/8", "10.0.0.0/8"},
        {"255.255.255.255", "255.255.255.255"},
        {"2001:db8::/32", "2001:db8::/32"},
        {"2001:DB8:0:0::/64", "2001:db8::/64"},
        {"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"},
        {"::1", "::1"},
        {"::1/128", "::1"},
        {"::/0", "::/0"},
        {"fe80::/10", "fe80::/10"},
        // The IPv4-mapped form of an IPv4 network is that network.
        {"::ffff:203.0.113.0/120", "203.0.113.0/24"},
        {"::ffff:198.51.100.7", "198.51.100.7"},
        {"::ffff:0:0/96", "0.0.0.0/0"},
        // Shorter than /96 it also covers other addresses: still IPv6.
        {"::fffe:0:0/95", "::fffe:0:0/95"},
    };
    for (const auto &[text, canonical] : cases) {
        SCOPED_TRACE(text);
        const IpNetwork n = net(text);
        EXPECT_EQ(format_network(n), canonical);
        EXPECT_EQ(net(format_network(n)), n);
    }
}

TEST(ParseNetwork, PrefixLengthsInTheSharedSpace) {
    EXPECT_EQ(net("203.0.113.0/24").bits, 96 + 24);
    EXPECT_EQ(net("198.51.100.7").bits, 128);
    EXPECT_EQ(net("0.0.0.0/0").bits, 96);
    EXPECT_EQ(net("2001:db8::/32").bits, 32);
    EXPECT_EQ(net("::/0").bits, 0);
    EXPECT_TRUE(net("0.0.0.0/0").is_ipv4());
    EXPECT_TRUE(net("198.51.100.7").is_ipv4());
    EXPECT_FALSE(net("::/0").is_ipv4());
    EXPECT_FALSE(net("::fffe:0:0/95").is_ipv4());
    EXPECT_NE(refusal("::ffff:0:0/95").find("(the network is ::fffe:0:0/95)"), std::string::npos);
}

TEST(ParseNetwork, EveryPrefixLengthAtTheBoundaries) {
    for (unsigned bits = 0; bits <= 32; bits++) {
        EXPECT_EQ(refusal("0.0.0.0/" + std::to_string(bits)), "") << bits;
    }
    for (unsigned bits = 0; bits <= 128; bits++) {
        EXPECT_EQ(refusal("::/" + std::to_string(bits)), "") << bits;
    }
    EXPECT_NE(refusal("0.0.0.0/33"), "");
    EXPECT_NE(refusal("::/129"), "");
    EXPECT_NE(refusal("10.0.0.0/999"), "");
}

TEST(ParseNetwork, HostBitsAreRefusedNamingTheNetwork) {
    EXPECT_NE(refusal("203.0.113.5/24").find("host bits are set (the network is 203.0.113.0/24)"),
              std::string::npos)
        << refusal("203.0.113.5/24");
    EXPECT_NE(refusal("2001:db8::1/32").find("(the network is 2001:db8::/32)"), std::string::npos)
        << refusal("2001:db8::1/32");
    EXPECT_NE(refusal("::ffff:203.0.113.5/120").find("(the network is 203.0.113.0/24)"),
              std::string::npos);
    EXPECT_NE(refusal("10.0.0.1/31"), "");
    EXPECT_EQ(refusal("10.0.0.2/31"), "");
    EXPECT_NE(refusal("128.0.0.0/0"), "");
    EXPECT_NE(refusal("8000::/0"), "");
    EXPECT_EQ(refusal("10.0.0.1/32"), "");
    EXPECT_NE(refusal("::1/127"), "");
}

TEST(ParseNetwork, MalformedInputsAreRefused) {
    const std::string too_long(200, '1');  // outlives `bad`
    const char *bad[] = {
        "",
        "/",
        "/24",
        "203.0.113.0/",
        "203.0.113.0/+8",
        "203.0.113.0/-8",
        "203.0.113.0/08",
        "203.0.113.0/ 8",
        "203.0.113.0 /8",
        " 203.0.113.0",
        "203.0.113.0 ",
        "203.0.113.0/24/24",
        "203.0.113",
        "203.0.113.0.1",
        "203.0.113.256",
        "203.0.113.01",
        "0x7f.0.0.1",
        "127.1",
        "2130706433",
        "localhost",
        "203.0.113.0/24,198.51.100.0/24",
        "2001:db8:::/32",
        "2001:db8::g/32",
        "2001:db8::/0032",
        "fe80::1%eth0",
        "fe80::1%eth0/128",
        "[::1]",
        "1:2:3:4:5:6:7:8:9",
        ":::",
        "2001:db8::1/12a",
        "all",
        too_long.c_str(),
    };
    for (const char *text : bad) {
        EXPECT_NE(refusal(text), "") << "accepted \"" << text << "\"";
    }
    // A NUL inside is not the end of the text.
    EXPECT_NE(refusal(std::string("10.0.0.1\0/8", 11)), "");
    EXPECT_NE(refusal(std::string("10.0.0.0/8\0", 11)), "");
}

TEST(ParseNetwork, ReasonsNameTheEntryAndTheFamily) {
    EXPECT_NE(refusal("10.0.0.0/33").find("\"10.0.0.0/33\""), std::string::npos);
    EXPECT_NE(refusal("10.0.0.0/33").find("0 to 32 for IPv4"), std::string::npos);
    EXPECT_NE(refusal("::/129").find("0 to 128 for IPv6"), std::string::npos);
    EXPECT_NE(refusal("10.0.0.256").find("not an IPv4 address"), std::string::npos);
    EXPECT_NE(refusal("2001:db8::g").find("not an IPv6 address"), std::string::npos);
    // Whatever bytes come in, the reason is printable.
    for (char c : refusal("10.0.0.\x1b[31m/8")) {
        EXPECT_TRUE(c >= 0x20 && c < 0x7f) << static_cast<int>(c);
    }
}

// ---- matching

TEST(NetworkContains, Ipv4) {
    const ClientAddress c = v4("203.0.113.77");
    EXPECT_TRUE(in("203.0.113.0/24", c));
    EXPECT_TRUE(in("203.0.113.77", c));
    EXPECT_TRUE(in("203.0.113.64/26", c));
    EXPECT_FALSE(in("203.0.113.0/26", c));
    EXPECT_FALSE(in("203.0.113.76", c));
    EXPECT_FALSE(in("203.0.114.0/24", c));
    EXPECT_TRUE(in("0.0.0.0/0", c));
    EXPECT_TRUE(in("128.0.0.0/1", c));
    EXPECT_FALSE(in("0.0.0.0/1", c));
}

TEST(NetworkContains, Ipv4Boundaries) {
    EXPECT_TRUE(in("203.0.113.0/24", v4("203.0.113.0")));
    EXPECT_TRUE(in("203.0.113.0/24", v4("203.0.113.255")));
    EXPECT_FALSE(in("203.0.113.0/24", v4("203.0.112.255")));
    EXPECT_FALSE(in("203.0.113.0/24", v4("203.0.114.0")));
    EXPECT_TRUE(in("10.0.0.0/31", v4("10.0.0.1")));
    EXPECT_FALSE(in("10.0.0.0/31", v4("10.0.0.2")));
    EXPECT_TRUE(in("0.0.0.0/0", v4("0.0.0.0")));
    EXPECT_TRUE(in("0.0.0.0/0", v4("255.255.255.255")));
}

TEST(NetworkContains, Ipv6) {
    const ClientAddress c = v6("2001:db8:1234::42");
    EXPECT_TRUE(in("2001:db8::/32", c));
    EXPECT_TRUE(in("2001:db8:1234::/48", c));
    EXPECT_TRUE(in("2001:db8:1234::42", c));
    EXPECT_FALSE(in("2001:db8:1234::43", c));
    EXPECT_FALSE(in("2001:db9::/32", c));
    EXPECT_TRUE(in("::/0", c));
    EXPECT_TRUE(in("2001:db8:1234::40/126", c));
    EXPECT_FALSE(in("2001:db8:1234::44/126", c));
    EXPECT_TRUE(in("::1", v6("::1")));
    EXPECT_FALSE(in("::1", v6("::2")));
    EXPECT_TRUE(in("2001:db8::/33", v6("2001:db8:7fff:ffff:ffff:ffff:ffff:ffff")));
    EXPECT_FALSE(in("2001:db8::/33", v6("2001:db8:8000::")));
}

TEST(NetworkContains, FamiliesDoNotMix) {
    // IPv6 networks shorter than /96 never take an IPv4 client, whatever
    // their bits; IPv4 networks never take a (non-mapped) IPv6 client.
    EXPECT_FALSE(in("::/0", v4("203.0.113.7")));
    EXPECT_FALSE(in("::/80", v4("0.0.0.0")));
    EXPECT_FALSE(in("::fffe:0:0/95", v4("203.0.113.7")));
    EXPECT_FALSE(in("0.0.0.0/0", v6("2001:db8::1")));
    EXPECT_FALSE(in("0.0.0.0/0", v6("::")));
    // ::cb00:7107 is the deprecated IPv4-compatible form: an IPv6 address.
    EXPECT_FALSE(in("203.0.113.7", v6("::203.0.113.7")));
}

TEST(NetworkContains, MappedClientsMatchIpv4Networks) {
    const ClientAddress c = v6("::ffff:203.0.113.7");
    EXPECT_EQ(c.family, AddressFamily::ipv4);
    EXPECT_EQ(std::memcmp(c.addr, v4("203.0.113.7").addr, 16), 0);
    EXPECT_TRUE(in("203.0.113.0/24", c));
    EXPECT_TRUE(in("203.0.113.7", c));
    EXPECT_TRUE(in("0.0.0.0/0", c));
    EXPECT_TRUE(in("::ffff:203.0.113.0/120", c));
    EXPECT_FALSE(in("::/0", c));
    EXPECT_FALSE(in("198.51.100.0/24", c));
    // An IPv4 client meets a mapped-form network as its IPv4 network.
    EXPECT_TRUE(in("::ffff:203.0.113.0/120", v4("203.0.113.200")));
}

TEST(NetworkContains, UnknownClientMatchesNothing) {
    const ClientAddress unknown;
    EXPECT_FALSE(in("0.0.0.0/0", unknown));
    EXPECT_FALSE(in("::/0", unknown));
    EXPECT_EQ(ClientSource{}.get().family, AddressFamily::unknown);
}

TEST(NetworkContains, AnyOfAList) {
    const std::vector<IpNetwork> list = {net("203.0.113.0/24"), net("2001:db8::/32"),
                                         net("198.51.100.7")};
    EXPECT_TRUE(any_network_contains(list.data(), list.size(), v4("198.51.100.7")));
    EXPECT_TRUE(any_network_contains(list.data(), list.size(), v4("203.0.113.9")));
    EXPECT_TRUE(any_network_contains(list.data(), list.size(), v6("2001:db8::9")));
    EXPECT_TRUE(any_network_contains(list.data(), list.size(), v6("::ffff:198.51.100.7")));
    EXPECT_FALSE(any_network_contains(list.data(), list.size(), v4("198.51.100.8")));
    EXPECT_FALSE(any_network_contains(list.data(), list.size(), v6("2001:db9::1")));
    EXPECT_FALSE(any_network_contains(list.data(), 0, v4("198.51.100.7")));
}

// ---- from a socket address (what the module passes in)

TEST(SocketClientAddress, Families) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(8080);
    ASSERT_EQ(inet_pton(AF_INET, "192.0.2.10", &sin.sin_addr), 1);
    ClientAddress a = socket_client_address(&sin);
    EXPECT_EQ(a.family, AddressFamily::ipv4);
    EXPECT_TRUE(in("192.0.2.0/24", a));

    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::10", &sin6.sin6_addr), 1);
    ClientAddress b = socket_client_address(&sin6);
    EXPECT_EQ(b.family, AddressFamily::ipv6);
    EXPECT_TRUE(in("2001:db8::/64", b));

    ASSERT_EQ(inet_pton(AF_INET6, "::ffff:192.0.2.10", &sin6.sin6_addr), 1);
    ClientAddress m = socket_client_address(&sin6);
    EXPECT_EQ(m.family, AddressFamily::ipv4);
    EXPECT_TRUE(in("192.0.2.10", m));

    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    EXPECT_EQ(socket_client_address(&sun).family, AddressFamily::unknown);
    EXPECT_EQ(socket_client_address(nullptr).family, AddressFamily::unknown);
}

TEST(ClientSource, ReadsThroughItsFunction) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    ASSERT_EQ(inet_pton(AF_INET, "192.0.2.10", &sin.sin_addr), 1);
    const ClientSource source{socket_client_address, &sin};
    EXPECT_TRUE(in("192.0.2.10", source.get()));
}

}  // namespace
}  // namespace apikey
