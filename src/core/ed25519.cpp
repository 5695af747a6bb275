#include "ed25519.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace apikey {

namespace detail {
void PkeyFree::operator()(evp_pkey_st *key) const noexcept { EVP_PKEY_free(key); }
}  // namespace detail

namespace {

// Reads a small regular file; a FIFO at the path fails at once instead of
// hanging nginx -t (the same care as load_key_file).
bool read_small_file(const std::string &path, std::string &out, std::string &error) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        error = path + ": cannot open: " + std::strerror(errno);
        return false;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        error = path + ": not a regular file";
        return false;
    }
    if (static_cast<std::uint64_t>(st.st_size) > kMaxPemFileBytes) {
        ::close(fd);
        error = path + ": larger than 64 KiB, not a PEM key";
        return false;
    }
    out.assign(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    while (got < out.size()) {
        const ssize_t n = ::read(fd, &out[got], out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            error = path + ": cannot read the key";
            return false;
        }
        got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return true;
}

// Wipes a private key's PEM text once it is parsed.
struct Wiped {
    std::string &text;
    ~Wiped() {
        if (!text.empty()) OPENSSL_cleanse(&text[0], text.size());
    }
};

// PEM_read_* would prompt on the terminal for an encrypted key; we never
// want that (nginx has no terminal, apikeyctl must not hang in a script).
int no_passphrase(char *, int, int, void *) { return -1; }

using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;

BioPtr memory_bio(std::string_view pem) {
    return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
}

bool contains(std::string_view text, std::string_view what) {
    return text.find(what) != std::string_view::npos;
}

bool is_ed25519(const evp_pkey_st *key) { return EVP_PKEY_id(key) == EVP_PKEY_ED25519; }

}  // namespace

std::optional<Ed25519Signer> Ed25519Signer::from_pem(std::string_view pem,
                                                     std::string &error) noexcept {
    try {
        if (pem.size() > kMaxPemFileBytes) {
            error = "larger than 64 KiB, not a PEM key";
            return std::nullopt;
        }
        BioPtr bio = memory_bio(pem);
        detail::PkeyPtr key(
            bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr) : nullptr);
        ERR_clear_error();  // nothing of ours may linger in the thread's error queue
        if (!key) {
            if (contains(pem, "ENCRYPTED")) {
                error =
                    "an encrypted private key; give an unencrypted one (openssl genpkey "
                    "-algorithm ed25519)";
            } else if (contains(pem, "PUBLIC KEY")) {
                error = "a public key; signing needs the private key";
            } else {
                error = "not a PEM private key (openssl genpkey -algorithm ed25519)";
            }
            return std::nullopt;
        }
        if (!is_ed25519(key.get())) {
            error = "not an Ed25519 key (openssl genpkey -algorithm ed25519)";
            return std::nullopt;
        }
        return Ed25519Signer(std::move(key));
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return std::nullopt;
    }
}

std::optional<Ed25519Signer> Ed25519Signer::load(const std::string &path,
                                                 std::string &error) noexcept {
    try {
        std::string pem;
        Wiped wipe{pem};
        if (!read_small_file(path, pem, error)) return std::nullopt;
        std::optional<Ed25519Signer> s = from_pem(pem, error);
        if (!s) error = path + ": " + error;
        return s;
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return std::nullopt;
    }
}

std::string Ed25519Signer::sign(std::string_view message) const noexcept {
    if (!key_) return {};  // moved from
    try {
        std::string sig(kEd25519SignatureBytes, '\0');
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (ctx == nullptr) return {};
        std::size_t len = sig.size();
        // Ed25519 hashes the message itself (PureEdDSA): no digest, one shot.
        const bool ok = EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key_.get()) == 1 &&
                        EVP_DigestSign(ctx, reinterpret_cast<unsigned char *>(&sig[0]), &len,
                                       reinterpret_cast<const unsigned char *>(message.data()),
                                       message.size()) == 1 &&
                        len == kEd25519SignatureBytes;
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        return ok ? sig : std::string();
    } catch (const std::bad_alloc &) {
        return {};
    }
}

std::optional<Ed25519Verifier> Ed25519Verifier::from_pem(std::string_view pem,
                                                         std::string &error) noexcept {
    try {
        if (pem.size() > kMaxPemFileBytes) {
            error = "larger than 64 KiB, not a PEM key";
            return std::nullopt;
        }
        BioPtr bio = memory_bio(pem);
        detail::PkeyPtr key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr)
                                : nullptr);
        ERR_clear_error();
        if (!key) {
            if (contains(pem, "PRIVATE KEY")) {
                error = "a private key; give the public key (openssl pkey -in KEY -pubout)";
            } else {
                error = "not a PEM public key (openssl pkey -in KEY -pubout)";
            }
            return std::nullopt;
        }
        if (!is_ed25519(key.get())) {
            error = "not an Ed25519 key (openssl genpkey -algorithm ed25519)";
            return std::nullopt;
        }
        return Ed25519Verifier(std::move(key));
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return std::nullopt;
    }
}

std::optional<Ed25519Verifier> Ed25519Verifier::load(const std::string &path,
                                                     std::string &error) noexcept {
    try {
        std::string pem;
        if (!read_small_file(path, pem, error)) return std::nullopt;
        std::optional<Ed25519Verifier> v = from_pem(pem, error);
        if (!v) error = path + ": " + error;
        return v;
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return std::nullopt;
    }
}

bool Ed25519Verifier::verify(std::string_view message, std::string_view signature) const noexcept {
    if (!key_ || signature.size() != kEd25519SignatureBytes) return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == nullptr) return false;
    const bool ok = EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, key_.get()) == 1 &&
                    EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char *>(signature.data()),
                                     signature.size(),
                                     reinterpret_cast<const unsigned char *>(message.data()),
                                     message.size()) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();  // a bad signature leaves an error behind
    return ok;
}

}  // namespace apikey
