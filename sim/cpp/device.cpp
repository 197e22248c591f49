// The neurofabric sim device: the Verilated LinkedChip serving its host-link byte stream on TCP.
//
// Listens on 127.0.0.1 at a port the OS picks (or argv[1] if given), prints "port N" on stdout,
// serves one client, and exits when the client disconnects, on SIGTERM/SIGINT, or when the parent
// process dies (PR_SET_PDEATHSIG). On exit it prints "cycles N" (clock cycles simulated) and
// "clocking_seconds S" (wall time spent clocking the design, i.e. not waiting for the host) and
// "cpu_seconds S" (processor time used, which other load on the machine does not inflate).
//
// The clock runs as fast as it can while there is work: bytes received and not yet taken by the
// design, a command executing or the chip running (the design's `idle` output low). Otherwise the
// harness blocks in poll() until bytes arrive. Socket I/O is done in batches (one recv/send per
// batch of up to BATCH_CYCLES cycles), never per byte; a batch ends early when a reply frame is
// complete, so the host waits for the reply, not for the batch.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "Vlinked_chip.h"
#include "verilated.h"

// Verilator escapes the double underscore of Amaranth's port names ("rx__valid").
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

namespace {

constexpr int BATCH_CYCLES = 4096;
constexpr size_t MAX_PENDING_OUT = 1 << 20;  // stop taking tx bytes beyond this (back-pressure)
constexpr int IDLE_POLL_MS = 200;

volatile sig_atomic_t stop_requested = 0;

void on_signal(int) { stop_requested = 1; }

[[noreturn]] void fail(const char *what) {
    std::fprintf(stderr, "sim device: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

struct Device {
    VerilatedContext context;
    Vlinked_chip *top;
    uint64_t cycles = 0;

    // The design has no reset input: its registers and memories start at their initial values.
    Device() : top(new Vlinked_chip(&context)) {
        top->clk = 0;
        top->RX_VALID = 0;
        top->TX_READY = 0;
        top->eval();
    }
    ~Device() {
        top->final();
        delete top;
    }
    // A rising edge; the falling edge is evaluated together with the next cycle's inputs
    // (the design has no negative-edge logic), so each cycle costs two eval() calls.
    void tick() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        cycles++;
    }

    // Run up to `budget` cycles, taking bytes from in[in_pos..] and appending tx bytes to out.
    // Returns early once the design is idle with no input left, or after a frame's closing 0x00.
    void run(const std::vector<uint8_t> &in, size_t &in_pos, std::vector<uint8_t> &out, int budget) {
        for (int i = 0; i < budget; i++) {
            bool have_input = in_pos < in.size();
            if (!have_input && top->idle) return;
            top->RX_VALID = have_input;
            top->RX_PAYLOAD = have_input ? in[in_pos] : 0;
            top->TX_READY = out.size() < MAX_PENDING_OUT;
            top->eval();
            bool rx_fire = top->RX_VALID && top->RX_READY;
            bool frame_end = false;
            if (top->TX_VALID && top->TX_READY) {
                frame_end = top->TX_PAYLOAD == 0 && !out.empty() && out.back() != 0;
                out.push_back(top->TX_PAYLOAD);
            }
            tick();
            if (rx_fire) in_pos++;
            if (frame_end) return;  // a reply is complete: send it now, not at the end of the batch
        }
    }
};

}  // namespace

int main(int argc, char **argv) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) fail("prctl");
    if (getppid() != parent) return 1;  // the parent died before prctl took effect
    struct sigaction action = {};
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    signal(SIGPIPE, SIG_IGN);
    Verilated::commandArgs(argc, argv);

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) fail("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address = {};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(argc > 1 ? std::atoi(argv[1]) : 0);
    if (bind(listener, reinterpret_cast<sockaddr *>(&address), sizeof address) != 0) fail("bind");
    if (listen(listener, 1) != 0) fail("listen");
    socklen_t length = sizeof address;
    if (getsockname(listener, reinterpret_cast<sockaddr *>(&address), &length) != 0) fail("getsockname");
    std::printf("port %d\n", ntohs(address.sin_port));
    std::fflush(stdout);

    int client = -1;
    while (client < 0) {
        if (stop_requested) return 0;
        pollfd waiting = {listener, POLLIN, 0};
        if (poll(&waiting, 1, IDLE_POLL_MS) > 0) client = accept(listener, nullptr, nullptr);
    }
    close(listener);
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK);

    Device device;
    std::vector<uint8_t> in, out;
    size_t in_pos = 0, out_pos = 0;
    std::vector<uint8_t> buffer(1 << 16);
    bool open = true;
    std::chrono::steady_clock::duration clocking{};
    while (open && !stop_requested) {
        bool busy = in_pos < in.size() || !device.top->idle;
        bool sending = out_pos < out.size();
        pollfd events = {client, static_cast<short>(POLLIN | (sending ? POLLOUT : 0)), 0};
        int ready = poll(&events, 1, busy ? 0 : IDLE_POLL_MS);
        if (ready < 0 && errno != EINTR) fail("poll");
        if (ready > 0 && (events.revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = recv(client, buffer.data(), buffer.size(), 0);
            if (got > 0) {
                if (in_pos == in.size()) {
                    in.clear();
                    in_pos = 0;
                }
                in.insert(in.end(), buffer.begin(), buffer.begin() + got);
            } else if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                open = false;
            }
        }
        auto started = std::chrono::steady_clock::now();
        device.run(in, in_pos, out, BATCH_CYCLES);
        clocking += std::chrono::steady_clock::now() - started;
        while (out_pos < out.size()) {
            ssize_t sent = send(client, out.data() + out_pos, out.size() - out_pos, 0);
            if (sent > 0) {
                out_pos += sent;
            } else {
                if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) open = false;
                break;
            }
        }
        if (out_pos == out.size()) {
            out.clear();
            out_pos = 0;
        }
    }
    close(client);
    std::printf("cycles %llu\nclocking_seconds %.6f\ncpu_seconds %.6f\n", static_cast<unsigned long long>(device.cycles),
                std::chrono::duration<double>(clocking).count(), static_cast<double>(std::clock()) / CLOCKS_PER_SEC);
    std::fflush(stdout);
    return 0;
}
