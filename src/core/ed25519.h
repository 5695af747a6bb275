// Ed25519 keys for the key channel (key_channel.h): apikeyctl signs what it
// publishes with a private key, nginx nodes verify with the public one, so
// whoever can write to Redis can delay a change but never forge one.
//
// Keys are PEM files as OpenSSL writes them:
//   openssl genpkey -algorithm ed25519 -out channel.key          (PKCS#8)
//   openssl pkey -in channel.key -pubout -out channel.pub        (SubjectPublicKeyInfo)
// Anything else (an RSA or EC key, an encrypted private key, a certificate)
// is refused when it is loaded, with a reason, so a wrong file is a
// configuration error and never a verifier that accepts nothing (or all).
//
// OpenSSL's types stay out of this header: the nginx glue includes it.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace apikey {

constexpr std::size_t kEd25519SignatureBytes = 64;

// PEM files are small; anything larger is not one.
constexpr std::size_t kMaxPemFileBytes = 64 * 1024;

namespace detail {
struct PkeyFree {
    void operator()(evp_pkey_st *key) const noexcept;
};
using PkeyPtr = std::unique_ptr<evp_pkey_st, PkeyFree>;
}  // namespace detail

class Ed25519Signer {
public:
    // nullopt with `error` set ("path: reason") when the file cannot be read
    // or is not an unencrypted Ed25519 private key.
    static std::optional<Ed25519Signer> load(const std::string &path, std::string &error) noexcept;
    static std::optional<Ed25519Signer> from_pem(std::string_view pem, std::string &error) noexcept;

    // The 64-byte signature of message; empty only if OpenSSL fails (out of
    // memory).
    std::string sign(std::string_view message) const noexcept;

private:
    explicit Ed25519Signer(detail::PkeyPtr key) noexcept : key_(std::move(key)) {}
    detail::PkeyPtr key_;
};

class Ed25519Verifier {
public:
    // nullopt with `error` set when the file cannot be read or is not an
    // Ed25519 public key (a private key is refused too: a node never needs
    // one, and must not be handed one).
    static std::optional<Ed25519Verifier> load(const std::string &path,
                                               std::string &error) noexcept;
    static std::optional<Ed25519Verifier> from_pem(std::string_view pem,
                                                   std::string &error) noexcept;

    // True only for a valid signature of exactly this message. Thread-safe:
    // the key is only read.
    bool verify(std::string_view message, std::string_view signature) const noexcept;

private:
    explicit Ed25519Verifier(detail::PkeyPtr key) noexcept : key_(std::move(key)) {}
    detail::PkeyPtr key_;
};

}  // namespace apikey
