// A private redis-server for tests that need the real one (the grant
// script's differential test, the sync engine against Redis): a free
// loopback port and a unix socket, gone with the object. Debian's
// redis-server is installed by scripts/setup; without it the tests fail
// with a clear message rather than skip.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/redis_link.h"

extern char **environ;

namespace apikey::test {

inline std::string find_redis_server() {
    const char *path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
    dirs += ":/usr/bin:/usr/sbin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        const std::size_t colon = dirs.find(':', start);
        const std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos
                                                                              : colon - start);
        const std::string candidate = dir + "/redis-server";
        if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
        if (colon == std::string::npos) break;
        start = colon + 1;
    }
    return {};
}

inline int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) != 0) {
        close(fd);
        return 0;
    }
    const int port = ntohs(a.sin_port);
    close(fd);
    return port;
}

// A private redis-server on a free loopback port (and a unix socket), gone
// with the fixture.
class RedisServer {
public:
    bool start(std::string &error) {
        const std::string bin = find_redis_server();
        if (bin.empty()) {
            error =
                "redis-server is not installed (apt-get install redis-server; "
                "scripts/setup installs it): the grant script cannot be checked";
            return false;
        }
        for (int attempt = 0; attempt < 5; attempt++) {
            port_ = free_port();
            socket_ = "/tmp/akm-test-redis-" + std::to_string(getpid()) + "-" +
                      std::to_string(port_) + ".sock";
            const std::string port = std::to_string(port_);
            std::vector<std::string> argv = {
                bin,   "--port",       port, "--bind",       "127.0.0.1", "--save",
                "",    "--appendonly", "no", "--unixsocket", socket_,     "--unixsocketperm",
                "700", "--logfile",    "",   "--daemonize",  "no"};
            std::vector<char *> cargv;
            for (std::string &s : argv) cargv.push_back(s.data());
            cargv.push_back(nullptr);
            posix_spawn_file_actions_t fa;
            posix_spawn_file_actions_init(&fa);
            posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
            posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
            const int rc = posix_spawn(&pid_, bin.c_str(), &fa, nullptr, cargv.data(), environ);
            posix_spawn_file_actions_destroy(&fa);
            if (rc != 0) {
                error = "cannot start redis-server";
                return false;
            }
            // Ready when it answers PING (or gone: the port was taken meanwhile).
            for (int i = 0; i < 500; i++) {
                auto link = make_hiredis_link();
                RedisEndpoint ep;
                ep.address = address();
                ep.timeout_ms = 1000;
                if (link->connect(ep).ok && link->command({"PING"}).ok) return true;
                int status = 0;
                if (waitpid(pid_, &status, WNOHANG) == pid_) {
                    pid_ = 0;
                    break;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            stop();
        }
        error = "redis-server did not come up";
        return false;
    }

    void stop() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            int status = 0;
            waitpid(pid_, &status, 0);
            pid_ = 0;
        }
        if (!socket_.empty()) unlink(socket_.c_str());
    }

    ~RedisServer() { stop(); }

    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    RedisEndpoint endpoint() const {
        RedisEndpoint ep;
        ep.address = address();
        ep.timeout_ms = 1000;
        ep.connect_timeout_ms = 1000;
        return ep;
    }
    const std::string &unix_socket() const { return socket_; }

private:
    pid_t pid_ = 0;
    int port_ = 0;
    std::string socket_;
};

}  // namespace apikey::test
