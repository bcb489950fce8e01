package example;

/** Entry point: {@code java -jar spiffe-example.jar server|client [URL...]}. */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            System.err.println("usage: java -jar spiffe-example.jar server | client URL...");
            System.exit(2);
        }
        String[] rest = java.util.Arrays.copyOfRange(args, 1, args.length);
        try {
            switch (args[0]) {
                case "server" -> Server.main(rest);
                case "client" -> Client.main(rest);
                default -> {
                    System.err.println("unknown command " + args[0] + ": use server or client");
                    System.exit(2);
                }
            }
        } catch (Exception e) {
            // The Workload API client keeps non-daemon threads: without an explicit
            // exit a failed start-up would leave a JVM that serves nothing.
            e.printStackTrace();
            System.exit(2);
        }
    }
}
