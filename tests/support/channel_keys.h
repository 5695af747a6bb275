// Fresh key pairs as PEM text for the key channel's tests: Ed25519 (what the
// channel signs with) and others (what it must refuse), made in memory with
// OpenSSL so no test depends on the openssl command or on files.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstddef>
#include <stdexcept>
#include <string>

namespace apikey::test {

struct PemPair {
    std::string private_pem;            // PKCS#8, as openssl genpkey writes it
    std::string public_pem;             // SubjectPublicKeyInfo, as openssl pkey -pubout writes it
    std::string encrypted_private_pem;  // PKCS#8 under a passphrase
};

inline std::string bio_text(BIO *bio) {
    char *data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string s(data, static_cast<std::size_t>(n));
    BIO_free(bio);
    return s;
}

inline PemPair pem_pair(EVP_PKEY *key) {
    if (key == nullptr) throw std::runtime_error("key generation failed");
    PemPair p;
    BIO *priv = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(priv, key, nullptr, nullptr, 0, nullptr, nullptr);
    p.private_pem = bio_text(priv);
    BIO *pub = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(pub, key);
    p.public_pem = bio_text(pub);
    BIO *enc = BIO_new(BIO_s_mem());
    char pass[] = "passphrase";
    PEM_write_bio_PKCS8PrivateKey(enc, key, EVP_aes_256_cbc(), pass, sizeof pass - 1, nullptr,
                                  nullptr);
    p.encrypted_private_pem = bio_text(enc);
    EVP_PKEY_free(key);
    return p;
}

inline PemPair ed25519_pem_pair() {
    return pem_pair(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
}

inline PemPair ec_pem_pair() {
    return pem_pair(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
}

inline PemPair rsa_pem_pair() {
    return pem_pair(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(1024)));
}

}  // namespace apikey::test
